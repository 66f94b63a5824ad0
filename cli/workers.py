"""`orchestrator worker` as a few processes: one Celery worker (threads pool) per CPU it may
use, sharing ``WORKER_CONCURRENCY`` between them, under one small supervising process.

Why: a threads-pool worker is one process under one GIL: its hundred threads run their
Python on one core at a time. One process per CPU uses them all (on the 2-core machine,
12–40 % more jobs a second than one process of the same concurrency, docs/benchmarks.md).
Each child is exactly the single-process worker (same locking, fencing, recovery,
metrics), so everything that is proven of one worker process holds of each.

The supervisor (this module's :func:`supervise`) runs no stage and keeps no connection (it
checks the services at start-up, as any worker does). It

- starts the children in its own process group, so ``kill -<sig> -<pgid>``, a terminal's
  Ctrl-C, ``docker stop`` and a Kubernetes pod's end reach them all;
- passes SIGTERM, SIGINT (as SIGTERM: a warm shutdown, never Celery's cold second Ctrl-C)
  and SIGQUIT (cold) on to each child, then exits once they all have; SIGHUP too, on
  which each child restarts itself as Celery does, and the supervisor stays;
- restarts a child that dies (a signal, an OOM kill, a crash after its start-up): its
  stages are recovered like any dead worker's; one killed within :data:`RESTART_AFTER`
  seconds of its start is restarted that long after its start, so a crash loop is not a
  tight one; a child that exits by itself within :data:`RESTART_AFTER` seconds of its
  start (a start-up failure) ends the whole worker with its exit code instead, as one
  process would;
- takes its children with it when it is killed itself: each child asks Linux to SIGKILL
  it when the supervisor dies (``PR_SET_PDEATHSIG``), so no orphan keeps running stages
  nobody supervises; recovery resumes them;
- with ``WORKER_METRICS_PORT``, serves the sum of its children's metrics, which they write
  to a directory of its own (:mod:`tasks.metrics`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from orchestrator.logs import log_event
from orchestrator.settings import WORKER_METRICS_DIR_ENV, WORKER_SHARES_ENV

log = logging.getLogger("orchestrator.worker")

#: ``auto`` runs at most this many processes however many CPUs there are: a few processes
#: use the cores a stage's own work needs (its waits cost no CPU); more would only split
#: WORKER_CONCURRENCY thinner and multiply the per-process memory and connections.
AUTO_MAX_PROCESSES = 4
#: A child that exits by itself (not by a signal) sooner than this after its start failed to
#: start: restarting it would only fail again.
RESTART_AFTER = 10.0
#: Set in each child's environment (with orchestrator.settings' WORKER_SHARES_ENV and, for
#: metrics, WORKER_METRICS_DIR_ENV): the supervisor's pid (the child exits at once if its
#: parent is already another).
SUPERVISOR_PID_ENV = "ORCHESTRATOR_WORKER_SUPERVISOR"

_PR_SET_PDEATHSIG = 1


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup"),
                membership: Path = Path("/proc/self/cgroup")) -> int:
    """The CPUs this process may run on: its affinity mask, bounded by a cgroup CPU quota
    (a container's ``--cpus``, a Kubernetes CPU limit, a systemd unit's ``CPUQuota=``),
    rounded up."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, membership)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(cpus, 1)


def cgroup_cpu_quota(root: Path, membership: Path = Path("/proc/self/cgroup")
                     ) -> float | None:
    """CPUs' worth of time this process's cgroup may use: the smallest quota over its own
    cgroup and every ancestor (cgroup v2 ``cpu.max``, or v1's CFS quota and period under
    ``cpu/``), or None when there is none or it cannot be read. ``membership`` is
    ``/proc/self/cgroup``, which says where the process sits under ``root``."""
    v2_path = v1_path = "/"
    try:
        for line in membership.read_text().splitlines():
            hierarchy, controllers, path = line.split(":", 2)
            if hierarchy == "0" and not controllers:
                v2_path = path
            elif "cpu" in controllers.split(","):
                v1_path = path
    except (OSError, ValueError):
        pass
    quotas = [q for directory in _up(root, v2_path)
              if (q := _quota(directory / "cpu.max", None)) is not None]
    quotas += [q for directory in _up(root / "cpu", v1_path)
               if (q := _quota(directory / "cpu.cfs_quota_us",
                               directory / "cpu.cfs_period_us")) is not None]
    return min(quotas) if quotas else None


def _up(top: Path, path: str) -> list[Path]:
    """``top``/``path`` and each directory above it, up to ``top``."""
    directory = top.joinpath(*[part for part in path.split("/") if part not in ("", ".", "..")])
    return [directory, *[d for d in directory.parents if d == top or top in d.parents]]


def _quota(quota_file: Path, period_file: Path | None) -> float | None:
    """One cgroup's quota in CPUs: v2's ``"<quota|max> <period>"`` in one file, or v1's two
    files (a quota of -1: none)."""
    try:
        if period_file is None:
            quota, period = quota_file.read_text().split()[:2]
        else:
            quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
        quota_us, period_us = int(quota), int(period)
    except (OSError, ValueError):  # absent, or "max": unlimited
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def process_count(requested: int | None, concurrency: int) -> int:
    """How many processes: the requested count, or ``auto`` (None): one per usable CPU, at
    most :data:`AUTO_MAX_PROCESSES`; never more than stages in flight."""
    wanted = requested if requested is not None else min(usable_cpus(), AUTO_MAX_PROCESSES)
    return max(1, min(wanted, concurrency))


def shares(concurrency: int, processes: int) -> list[int]:
    """``concurrency`` stages in flight split as evenly as can be over ``processes``."""
    base, extra = divmod(concurrency, processes)
    return [base + (1 if i < extra else 0) for i in range(processes)]


def child_hostname(hostname: str | None, index: int) -> str:
    """Each child's Celery node name: ``name-<index>@host`` from ``name@host`` (Celery's
    default name is ``celery``; a name without ``@`` is a host), so that Flower and
    ``celery inspect`` tell the processes apart."""
    name, at, host = (hostname or "celery@%h").partition("@")
    if not at:
        name, host = "celery", name
    return f"{name}-{index}@{host}"


def bind_to_supervisor() -> None:
    """In a child: die with the supervisor. Linux's parent-death signal is set first, then
    the parent checked, so a supervisor that died in between is not missed."""
    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if not supervisor:
        return
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(supervisor):
        os._exit(1)


@dataclass
class Child:
    index: int
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def start(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(self.argv, env=env)
        self.started = time.monotonic()
        log_event(log, "worker.process_started", index=self.index, child_pid=self.process.pid)


@dataclass
class Supervisor:
    children: list[Child]
    env: dict[str, str]
    stopping: str | None = None
    exit_code: int = 0
    by_pid: dict[int, Child] = field(default_factory=dict)

    def forward(self, signum: int, _frame: FrameType | None = None) -> None:
        sent = signal.SIGQUIT if signum == signal.SIGQUIT else signal.SIGTERM
        if self.stopping is None:
            self.stopping = signal.Signals(signum).name
            log_event(log, "worker.stopping", signal=self.stopping,
                      processes=len(self.by_pid))
        for pid in list(self.by_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sent)

    def reload(self, signum: int, _frame: FrameType | None = None) -> None:
        """SIGHUP: each child restarts itself as a Celery worker does (a warm stop, then
        the same command again, same pid); the supervisor stays."""
        log_event(log, "worker.reloading", processes=len(self.by_pid))
        for pid in list(self.by_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, self.forward)
        signal.signal(signal.SIGHUP, self.reload)
        for child in self.children:
            if self.stopping is None:  # (a SIGTERM during the start-up: start no more)
                self._start(child)
        while self.by_pid:
            pid, status = os.wait()
            if pid not in self.by_pid:
                continue
            child = self.by_pid.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            ran = time.monotonic() - child.started
            restart = self.stopping is None and (code < 0 or ran >= RESTART_AFTER)
            # A child that keeps dying young (killed again and again: out of memory, say)
            # is started at most once every RESTART_AFTER seconds, not in a tight loop.
            delay = max(0.0, RESTART_AFTER - ran) if restart else 0.0
            log_event(log, "worker.process_exited",
                      logging.INFO if self.stopping else logging.ERROR, index=child.index,
                      child_pid=pid, exit_code=code, ran_seconds=round(ran, 1),
                      restarting=restart, restart_in_seconds=round(delay, 1))
            if restart:
                time.sleep(delay)  # (a SIGTERM meanwhile is passed on at once, and then
                # the child is not started again)
                if self.stopping is None:
                    self._start(child)
            elif code != 0 and self.exit_code == 0:
                self.exit_code = code if code > 0 else 128 - code
                if self.stopping is None:  # failed to start: the others go too
                    self.forward(signal.SIGTERM)
        log_event(log, "worker.stopped", exit_code=self.exit_code)
        return self.exit_code

    def _start(self, child: Child) -> None:
        child.start(self.env)
        assert child.process is not None
        self.by_pid[child.process.pid] = child


def supervise(*, concurrencies: Sequence[int], hostname: str | None,
              child_args: Sequence[str], metrics_port: int | None,
              metrics_flush_interval: float) -> int:
    """Run one single-process worker per share of ``concurrencies`` until they have all
    stopped; the exit code to leave with."""
    env = {**os.environ, SUPERVISOR_PID_ENV: str(os.getpid()), "WORKER_PROCESSES": "1",
           WORKER_SHARES_ENV: ",".join(str(share) for share in concurrencies)}
    metrics_dir: Path | None = None
    server = None
    if metrics_port is not None:
        metrics_dir = Path(tempfile.mkdtemp(prefix="orchestrator-worker-metrics-"))
        env[WORKER_METRICS_DIR_ENV] = str(metrics_dir)
        server = _serve_metrics(metrics_port, metrics_dir, metrics_flush_interval)
    children = [
        Child(i, [sys.executable, "-m", "cli", "worker", "--processes", "1",
                  "--concurrency", str(share), "--hostname", child_hostname(hostname, i),
                  *child_args])
        for i, share in enumerate(concurrencies, start=1)]
    log_event(log, "worker.processes", processes=len(children),
              concurrency=sum(concurrencies), shares=list(concurrencies))
    try:
        return Supervisor(children, env).run()
    finally:
        if server is not None:
            server.shutdown()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve_metrics(port: int, directory: Path, flush_interval: float) -> Any:
    from prometheus_client import CollectorRegistry, start_http_server

    from tasks.metrics import SnapshotCollector, in_flight_ttl

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(directory, in_flight_ttl(flush_interval)))
    server, _ = start_http_server(port, addr="0.0.0.0", registry=registry)
    log_event(log, "worker.metrics_serving", port=port)
    return server
