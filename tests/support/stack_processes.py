"""`orchestrator up` run as an operator runs it (in a terminal, from a script, in the
background), and every process it started, found through /proc: whatever has the test's
data directory in its environment or command line, or works inside it (the embedded
PostgreSQL's backends and Redis rename themselves over their environment, but run in
their data directories)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import termios
import threading
from pathlib import Path

from cli.embedded import free_port
from tests.support.processes import ROOT, wait_for

CLI = str(Path(sys.executable).parent / "orchestrator")
UNSET = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "ORCHESTRATOR_API_TOKENS",
         "DOWNSTREAM_TOKEN", "CELERY_QUEUE", "LOCK_KEY_PREFIX")
READY = "Ctrl-C to stop."


def embedded_env(data_dir: Path) -> dict[str, str]:
    """No PostgreSQL or Redis configured (so `up` starts embedded ones: the case that
    leaked), the data in ``data_dir``, free ports."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(ORCHESTRATOR_DATA_DIR=str(data_dir), ORCHESTRATOR_PORT=str(free_port()),
               DOWNSTREAM_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    return env


def start_time(pid: int) -> int | None:
    """When ``pid`` started (/proc/PID/stat's 22nd field), None if it is gone or a zombie:
    with the PID, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _describe(pid: int) -> str | None:
    """How ``pid`` shows in ps, if it is alive (zombies are not)."""
    if start_time(pid) is None:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return None
    return cmdline.decode(errors="replace").strip()


def processes_of(data_dir: Path) -> dict[int, str]:
    """Every live process belonging to ``data_dir``: pid → command line."""
    directory = str(data_dir.resolve())
    in_environment = f"ORCHESTRATOR_DATA_DIR={data_dir}".encode()
    found = {}
    mine = _ancestry()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in mine:
            continue
        pid = int(name)
        with contextlib.suppress(OSError):
            cwd = os.readlink(f"/proc/{pid}/cwd")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if (in_environment in environ or directory.encode() in cmdline
                    or cwd == directory or cwd.startswith(directory + "/")):
                description = _describe(pid)
                if description is not None:
                    found[pid] = description
    return found


def _ancestry() -> set[int]:
    """This process and its ancestors: never counted, never killed."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
    return pids


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def kill_all(data_dir: Path) -> None:
    """SIGKILL whatever is left of ``data_dir``'s stack (a failed test's cleanup)."""
    for _ in range(50):
        left = processes_of(data_dir)
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not processes_of(data_dir), 2, "killed processes to go")


def postgres_handles(data_dir: Path) -> list[int]:
    path = data_dir / "postgres" / ".handle_pids.json"
    return json.loads(path.read_text() or "[]") if path.exists() else []


class Up:
    """`orchestrator up` started with ``how``:

    - ``pipe``: from a script, its output a pipe;
    - ``terminal``: in a terminal of its own (a pty it controls), so closing the
      terminal hangs it up, as closing a terminal window does;
    - ``background``: ``orchestrator up &`` from a non-interactive shell, which starts it
      with SIGINT ignored; the shell exits, `up` is nobody's child here.
    """

    def __init__(self, data_dir: Path, env: dict[str, str], how: str = "pipe"):
        self.data_dir, self.env, self.how = data_dir, env, how
        self.proc: subprocess.Popen[bytes] | None = None
        self._chunks: list[bytes] = []
        self._stop_reading = threading.Event()
        self._master: int | None = None
        self.log_path = data_dir.parent / f"up-{id(self)}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        if how == "background":
            shell = subprocess.run(["/bin/sh", "-c", '"$0" up >"$1" 2>&1 & echo $!', CLI,
                                   str(self.log_path)], env=env, cwd=ROOT, check=True,
                                   capture_output=True, text=True, timeout=30)
            self.pid = int(shell.stdout.strip())
            return
        if how == "terminal":
            self._master, slave = os.openpty()
            self.proc = subprocess.Popen(
                [CLI, "up"], env=env, cwd=ROOT, stdin=slave, stdout=slave, stderr=slave,
                start_new_session=True,  # then the pty becomes its controlling terminal
                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
            os.close(slave)
            source = self._master
        else:
            self.proc = subprocess.Popen([CLI, "up"], env=env, cwd=ROOT,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert self.proc.stdout is not None
            source = self.proc.stdout.fileno()
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, args=(source,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        """Keep draining the output (the children's logs go there too, and a full pipe or
        pty would block them)."""
        while not self._stop_reading.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the pty's other side is closed
                    return
                if not chunk:
                    return
                self._chunks.append(chunk)

    @property
    def output(self) -> str:
        if self.how == "background":
            return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return b"".join(self._chunks).decode(errors="replace")

    def running(self) -> bool:
        return start_time(self.pid) is not None

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            if READY in self.output:
                return True
            if not self.running():
                raise AssertionError(f"up exited before it was ready:\n{self.output[-3000:]}")
            return False

        wait_for(ready, timeout, "`orchestrator up` to print its URLs", interval=0.1)

    def send(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def close_terminal(self) -> None:
        """Close the terminal's other side, as closing its window does: the kernel sends
        SIGHUP to `up`, which controls it, and writes to it fail from then on."""
        assert self._master is not None
        self._stop_reading.set()
        self._reader.join(timeout=5)
        os.close(self._master)
        self._master = None

    def wait_exit(self, timeout: float = 60) -> int | None:
        """The exit status when `up` is our child (None in the background case)."""
        wait_for(lambda: not self.running(), timeout, "`orchestrator up` to exit")
        return self.proc.wait(timeout=5) if self.proc else None

    def close(self) -> None:
        self._stop_reading.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._master is not None:
            os.close(self._master)
            self._master = None
