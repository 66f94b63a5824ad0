"""Memory of the worker's and the API's process trees after the run.

Each service runs in its own session: the Celery main process plus its prefork pool, the
gunicorn arbiter plus its workers. For each tree, psutil sums the resident set size (RSS:
counts pages shared between forked processes once per process, so it overstates) and the
proportional set size (PSS: shared pages split between their sharers; Linux only, may be
unavailable), in MiB.
"""

from __future__ import annotations

import contextlib

import psutil

from benchmarks.stack import Stack

MIB = 1024 * 1024


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_memory(pid: int) -> tuple[float, float | None, int]:
    """(RSS MiB, PSS MiB or None, number of processes) of ``pid`` and its descendants."""
    processes = tree(pid)
    rss = 0
    pss: int | None = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            rss += process.memory_info().rss
            try:
                pss = None if pss is None else pss + process.memory_full_info().pss
            except (psutil.AccessDenied, AttributeError):
                pss = None
    return rss / MIB, (pss / MIB if pss is not None else None), len(processes)


def run(stack: Stack) -> dict[str, float]:
    figures: dict[str, float] = {}
    for name, service in (("worker", stack.worker), ("api", stack.api)):
        rss, pss, count = tree_memory(service.proc.pid)
        pss_text = f", PSS {pss:.1f} MiB" if pss is not None else ""
        print(f"[memory] {name}: {count} processes, RSS {rss:.1f} MiB{pss_text}", flush=True)
        figures[f"{name}_rss_mb"] = round(rss, 1)
        if pss is not None:
            figures[f"{name}_pss_mb"] = round(pss, 1)
        figures[f"{name}_processes"] = count
    return figures
