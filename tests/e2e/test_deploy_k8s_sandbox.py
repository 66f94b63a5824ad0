"""The containers of deploy/k8s run as the manifests say, with no cluster: each process is
started with its container's command, args and environment (the ConfigMap's, with the
Secret's keys and the service URLs pointing at the test's own), as its securityContext's
UID/GID, on a read-only root filesystem where only the container's emptyDir mounts are
writable — a user and mount namespace (util-linux ``unshare``) standing in for the
kubelet. A job goes through both worker pools, the API answers its probes and /metrics,
and no process complains of a file it could not write."""

from __future__ import annotations

import functools
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from cli.embedded import free_port
from tests.conftest import API_TOKEN, make_env
from tests.support.processes import Service, wait_for
from tests.unit.test_deploy_k8s import (
    effective,
    environment,
    port_number,
    secret_example,
    with_role,
)

pytestmark = pytest.mark.integration

HEADERS = {"Authorization": f"Bearer {API_TOKEN}"}
#: What the test takes from its own deployment rather than from the manifests: the
#: services and their credentials (the Secret's keys), its own queue and lock prefix, and
#: a small worker (the shared PostgreSQL's connections).
FROM_THE_TEST = ("DATABASE_URL", "REDIS_URL", "ORCHESTRATOR_API_TOKENS", "DOWNSTREAM_TOKEN",
                 "CELERY_QUEUE", "LOCK_KEY_PREFIX", "TERRAFORM_EXECUTION_URL",
                 "PLAN_INTERPRETER_URL", "PRICING_ENRICHER_URL", "COST_CALCULATOR_URL")
CHECKOUT = Path(__file__).resolve().parents[2]
#: What the image sets (Dockerfile ENV) and a pod inherits.
IMAGE_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
#: Lines a process writes when the read-only root gets in its way.
COMPLAINTS = ("Read-only file system", "Failed to start control socket", "Permission denied")


def sandbox_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c",
         "mount -o remount,bind,ro / && exec unshare --map-user=10001 --map-group=10001 true"],
        capture_output=True)
    return probe.returncode == 0


def over_tcp(database_url: str, redis_url: str) -> bool:
    """Services on a unix socket (the embedded ones) may live under a path the sandbox's
    /tmp hides."""
    pg = urlsplit(database_url)
    return bool(pg.hostname) and "host" not in parse_qs(pg.query) and \
        urlsplit(redis_url).scheme in ("redis", "rediss")


def sandboxed(spec: dict[str, Any], container: dict[str, Any], argv: list[str],
              env: dict[str, str]) -> list[str]:
    """``argv`` as the kubelet would run it: each emptyDir of the container a fresh tmpfs at
    its mountPath, the root read-only, the pod's user and group, only ``env``."""
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    # This checkout and its venv stand for the image's installed code: an emptyDir that
    # covers them (a clone under /tmp) must not hide them. Each is held open on a file
    # descriptor before the mounts, and bound back inside the emptyDir after its mount.
    keep = sorted({CHECKOUT, Path(sys.prefix).resolve()}, key=lambda p: len(p.parts))
    keep = [k for k in keep if not any(k != o and o in k.parents for o in keep)]
    script = [f"exec {3 + i}<{shlex.quote(str(k))}" for i, k in enumerate(keep)]
    for mount in container["volumeMounts"]:
        assert mount["name"] in empty_dirs, f"{mount['name']}: only emptyDirs are sandboxed"
        path = PurePosixPath(mount["mountPath"])
        existing = next(p for p in (path, *path.parents) if Path(p).exists())
        if existing != path:
            # Its mountpoint is not on this machine: cover the nearest parent with a tmpfs
            # (in this namespace only) to make one, as the container runtime does.
            assert existing != PurePosixPath("/"), f"{path}: no parent to make it in"
            script += [f"mount -t tmpfs -o mode=755 tmpfs {shlex.quote(str(existing))}",
                       f"mkdir -p {shlex.quote(str(path))}"]
        script.append(f"mount -t tmpfs -o mode=1777 tmpfs {shlex.quote(str(path))}")
        for i, kept in enumerate(keep):
            if Path(path) in kept.parents:
                script += [f"mkdir -p {shlex.quote(str(kept))}",
                           f"mount --no-canonicalize --bind /proc/self/fd/{3 + i} "
                           f"{shlex.quote(str(kept))}"]
    uid, gid = effective(spec, container, "runAsUser"), effective(spec, container, "runAsGroup")
    script += ["mount -o remount,bind,ro /",
               f'exec unshare --map-user={uid} --map-group={gid} -- env -i "$@"']
    return ["unshare", "-r", "-m", "sh", "-c", " && ".join(script), "sandbox",
            *(f"{k}={v}" for k, v in env.items()), *argv]


def container_argv(container: dict[str, Any]) -> list[str]:
    """The container's command and args, `orchestrator` (or `celery`) being this
    checkout's."""
    [command] = container["command"]
    assert command in ("orchestrator", "celery")
    return [str(Path(sys.executable).parent / command), *container["args"]]


def deployed_env(container: dict[str, Any], ours: dict[str, str],
                 **overrides: str) -> dict[str, str]:
    env = {**IMAGE_ENV, **environment(container)}
    env.update({k: ours[k] for k in FROM_THE_TEST})
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
    env.update(overrides)
    return env


def complaints(services: list[Service]) -> list[str]:
    return [f"{s.name}: {line}" for s in services
            for line in s.log_path.read_text(errors="replace").splitlines()
            if any(c in line for c in COMPLAINTS)]


@pytest.fixture
def sandbox(private_database: str, redis_url: str) -> None:
    if not sandbox_works():
        pytest.skip("needs util-linux unshare with user namespaces (read-only root, UID "
                    "10001) on this machine")
    if not over_tcp(private_database, redis_url):
        pytest.skip("needs PostgreSQL and Redis over TCP (TEST_DATABASE_URL/TEST_REDIS_URL)")


def test_the_deployed_containers_run_a_job_on_a_read_only_root(
        sandbox: None, private_database: str, redis_url: str, downstream: Any,
        tmp_path: Path) -> None:
    ours = make_env(private_database, redis_url, downstream)
    services: list[Service] = []
    try:
        # Given each worker pool started as its Deployment says (one per pod there: here a
        # node name of its own, which the pod's hostname gives it in the cluster)
        for deployment, spec, container in with_role("worker"):
            name = deployment["metadata"]["name"]
            env = deployed_env(container, ours, WORKER_CONCURRENCY="2")
            argv = [*container_argv(container), "--hostname", f"{name}@%h"]
            services.append(Service(name, sandboxed(spec, container, argv, env), {},
                                    tmp_path))
        for worker in services:
            worker.wait_event("worker.ready", timeout=90)
        # And the API as its Deployment says, on a free port (8001 may be taken here)
        [(_, spec, container)] = with_role("api")
        port = free_port()
        api = Service("api", sandboxed(spec, container, container_argv(container),
                                       deployed_env(container, ours,
                                                    ORCHESTRATOR_PORT=str(port))),
                      {}, tmp_path)
        services.append(api)
        base = f"http://127.0.0.1:{port}"

        def probe(kind: str) -> bool:
            if api.proc.poll() is not None:
                raise AssertionError("api exited:\n" + api.log_path.read_text()[-3000:])
            http = container[f"{kind}Probe"]["httpGet"]
            assert port_number(container, http["port"]) == 8001  # the manifest's port
            try:
                return requests.get(base + http["path"], timeout=5).status_code == 200
            except requests.RequestException:
                return False

        # Then its probes pass, readiness included (PostgreSQL, Redis, the broker)
        for kind in ("startup", "liveness", "readiness"):
            wait_for(functools.partial(probe, kind), 60, f"the API's {kind} probe")
        # When a job is started
        job_id = uuid.uuid4()
        started = requests.post(f"{base}/internal/jobs/{job_id}/start", headers=HEADERS,
                                json={"input": {}}, timeout=10)
        assert started.status_code == 202, started.text
        # Then it goes through both pools to COMPLETED
        def state() -> str | None:
            response = requests.get(f"{base}/internal/jobs/{job_id}/state", headers=HEADERS,
                                    timeout=10)
            current = response.json()["current_state"]
            return current if current in ("COMPLETED", "FAILED") else None

        assert wait_for(state, 60, f"job {job_id} to end") == "COMPLETED"
        by_pool = {s.name: {e["stage"] for e in s.events() if e.get("event") == "stage.started"}
                   for s in services if s is not api}
        assert by_pool == {"orchestrator-worker-planning": {"PLANNING"},
                           "orchestrator-worker-pricing": {"PARSING", "ENRICHING", "COSTING"}}
        # And /metrics answers from the multiprocess directory on its emptyDir
        metrics = requests.get(f"{base}/metrics", timeout=10)
        assert metrics.status_code == 200 and "orchestrator_jobs" in metrics.text
    finally:
        for service in reversed(services):
            service.stop()
    # And nothing was refused a write
    assert complaints(services) == []


def test_the_deployed_flower_asks_for_its_password_on_a_read_only_root(
        sandbox: None, private_database: str, redis_url: str, downstream: Any,
        tmp_path: Path) -> None:
    ours = make_env(private_database, redis_url, downstream)
    [(_, spec, container)] = with_role("flower")
    # Given Flower as its Deployment says, on a free port (its 5555 may be taken here)
    port = free_port()
    argv = [a if not a.startswith("--port=") else f"--port={port}"
            for a in container_argv(container)]
    flower = Service("flower", sandboxed(spec, container, argv, deployed_env(container, ours)),
                     {}, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        def probe() -> bool:
            if flower.proc.poll() is not None:
                raise AssertionError("flower exited:\n" + flower.log_path.read_text()[-3000:])
            path = container["readinessProbe"]["httpGet"]["path"]
            try:
                return requests.get(base + path, timeout=5).status_code == 200
            except requests.RequestException:
                return False

        # Then its probe passes without credentials
        wait_for(probe, 60, "Flower's readiness probe")
        # And its pages and API want the Secret's FLOWER_BASIC_AUTH
        user, _, password = secret_example()["stringData"]["FLOWER_BASIC_AUTH"].partition(":")
        for path in ("/", "/api/workers"):
            assert requests.get(base + path, timeout=10).status_code == 401, path
        assert requests.get(f"{base}/workers", auth=(user, password), timeout=10).ok
    finally:
        flower.stop()
    assert complaints([flower]) == []
