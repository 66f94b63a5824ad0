"""Real processes for the tests: Celery workers and the API, started as a user starts
them, each in its own process group so a test can SIGKILL or SIGSTOP the whole of it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Service:
    """A subprocess whose JSON log lines go to a file the test can read."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env={**os.environ, **env}, cwd=ROOT,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def events(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue
        return lines

    def has_event(self, event: str, **fields: Any) -> bool:
        return any(e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
                   for e in self.events())

    def wait_event(self, event: str, timeout: float = 30, **fields: Any) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}); log:\n"
                                     + self.log_path.read_text()[-3000:])
            return self.has_event(event, **fields)

        wait_for(seen, timeout, f"{event} in {self.name}'s log")

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and its pool children."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.signal(signal.SIGKILL)  # pool children left behind, if any
        self._log.close()


def start_worker(name: str, env: dict[str, str], log_dir: Path, concurrency: int = 2,
                 timeout: float = 60, via_celery: bool = False,
                 pool: str | None = None) -> Service:
    """`orchestrator worker` (its default pool unless ``pool`` is given), or with
    ``via_celery`` Celery's own `celery -A tasks worker`."""
    if via_celery:
        argv = [sys.executable, "-m", "celery", "-A", "tasks", "worker",
                "--pool", pool or "prefork", "--concurrency", str(concurrency),
                "--loglevel", "INFO"]
    else:
        argv = [sys.executable, "-m", "cli", "worker", *(["--pool", pool] if pool else []),
                "--concurrency", str(concurrency)]
    argv += ["--hostname", f"{name}@%h", "--without-gossip", "--without-mingle"]
    service = Service(name, argv, env, log_dir)
    with _stopped_unless_ready(service):
        service.wait_event("worker.ready", timeout=timeout)
    return service


@contextlib.contextmanager
def _stopped_unless_ready(service: Service) -> Iterator[None]:
    """Stop the process if waiting for it fails or is interrupted (Ctrl-C included), so a
    failed start-up leaves nothing running."""
    try:
        yield
    except BaseException:
        service.stop()
        raise


def start_api(env: dict[str, str], log_dir: Path, port: int, timeout: float = 30) -> Service:
    import requests

    service = Service("api", [str(Path(sys.executable).parent / "orchestrator"), "api"],
                      {**env, "ORCHESTRATOR_PORT": str(port)}, log_dir)

    def up() -> bool:
        if service.proc.poll() is not None:
            raise AssertionError("api exited:\n" + service.log_path.read_text()[-3000:])
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    with _stopped_unless_ready(service):
        wait_for(up, timeout, "the API to answer /healthz")
    return service
