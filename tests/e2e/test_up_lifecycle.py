"""Stopping `orchestrator up` (issue 13): on the embedded default (DATABASE_URL/REDIS_URL
unset: its own PostgreSQL and Redis, the case that leaked), however it is stopped —
SIGTERM, its terminal closed, SIGINT to a background one, SIGKILL — nothing it started
keeps running; a later `up` on the same data directory finds what a killed one left and
stops it, or refuses while one runs. "Nothing it started" is every process with the
test's data directory in its environment or command line, or working inside it (see
tests/support/stack_processes.py); each test kills whatever is left when it ends."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from cli.embedded import port_is_free
from tests.support.processes import ROOT, wait_for
from tests.support.stack_processes import (
    CLI,
    Up,
    comm,
    embedded_env,
    kill_all,
    postgres_handles,
    processes_of,
    start_time,
)

pytestmark = pytest.mark.integration
CHILDREN = ("cli downstream", "cli worker", "cli api")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Not under pytest's basetemp: run as root, pgserver runs PostgreSQL as the user
    ``pgserver``, which must traverse every parent directory, and a pytest session starting
    meanwhile makes /tmp/pytest-of-root private again."""
    base = Path(tempfile.mkdtemp(prefix="orch-up-test-"))
    directory = base / "data"
    try:
        yield directory
    finally:
        kill_all(directory)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def ups() -> Iterator[list[Up]]:
    started: list[Up] = []
    try:
        yield started
    finally:
        for up in started:
            up.close()


def start_up(ups: list[Up], data_dir: Path, env: dict[str, str], how: str = "pipe") -> Up:
    up = Up(data_dir, env, how)
    ups.append(up)
    up.wait_ready()
    return up


def the_whole_stack(data_dir: Path) -> dict[int, int]:
    """What a running `up` has started, checked to be all there (so a test cannot pass by
    not seeing it): pid → start time."""
    running = processes_of(data_dir)
    kinds = {comm(pid) for pid in running}
    assert {"postgres", "redis-server"} <= kinds, running
    for child in CHILDREN:
        assert any(child in cmdline for cmdline in running.values()), (child, running)
    return {pid: start_time(pid) or 0 for pid in running}


def wait_until_nothing_is_left(data_dir: Path, started: dict[int, int],
                               timeout: float = 60) -> None:
    def nothing_left() -> bool:
        return not processes_of(data_dir) and not [
            pid for pid, start in started.items() if start_time(pid) == start]

    try:
        wait_for(nothing_left, timeout, "every process of the stack to exit")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still running: {processes_of(data_dir)}") from None


def assert_stopped_cleanly(data_dir: Path, env: dict[str, str]) -> None:
    assert port_is_free(int(env["ORCHESTRATOR_PORT"]))
    assert port_is_free(int(env["DOWNSTREAM_PORT"]))
    assert postgres_handles(data_dir) == []  # pgserver keeps no PID of ours
    assert not (data_dir / "stack.json").exists()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP: its terminal closed",
                                 "SIGINT: started in the background"])
def test_up_stops_everything_it_started_when_told_to_stop(data_dir, ups, how):
    env = embedded_env(data_dir)
    mode = {"SIGTERM": "pipe", "SIGHUP": "terminal", "SIGINT": "background"}[how.split(":")[0]]
    up = start_up(ups, data_dir, env, mode)
    started = the_whole_stack(data_dir)

    if mode == "terminal":
        up.close_terminal()
    else:
        up.send(signal.SIGTERM if mode == "pipe" else signal.SIGINT)

    status = up.wait_exit()
    wait_until_nothing_is_left(data_dir, started)
    assert_stopped_cleanly(data_dir, env)
    if mode != "terminal":  # no terminal left to read from
        assert "stopping…" in up.output
    if status is not None:
        assert status == 0, up.output[-3000:]


def test_when_up_is_killed_its_guard_stops_everything_and_the_next_up_runs_cleanly(
        data_dir, ups):
    env = embedded_env(data_dir)
    up = start_up(ups, data_dir, env)
    started = the_whole_stack(data_dir)

    up.send(signal.SIGKILL)
    wait_until_nothing_is_left(data_dir, started)
    assert_stopped_cleanly(data_dir, env)
    guard_log = (data_dir / "stack-guard.log").read_text()
    assert f"orchestrator up (PID {up.pid}) ended without stopping its stack" in guard_log
    assert "PostgreSQL" in guard_log and "Redis" in guard_log

    # The next one finds nothing to stop, and stops its PostgreSQL when it ends (with the
    # killed one's PID left in pgserver's handle list, it never did).
    again = start_up(ups, data_dir, env)
    assert "Stopped what a killed stack left" not in again.output
    assert postgres_handles(data_dir) == [again.pid]
    started = the_whole_stack(data_dir)
    again.send(signal.SIGTERM)
    assert again.wait_exit() == 0
    wait_until_nothing_is_left(data_dir, started)
    assert_stopped_cleanly(data_dir, env)


def test_children_die_with_a_killed_up_and_the_next_up_stops_the_servers_it_left(
        data_dir, ups):
    env = embedded_env(data_dir)
    up = start_up(ups, data_dir, env)
    started = the_whole_stack(data_dir)
    guard = [pid for pid, cmdline in processes_of(data_dir).items()
             if "-m cli.embedded" in cmdline]
    assert len(guard) == 1, processes_of(data_dir)
    # The servers themselves (not PostgreSQL's backends, which end with their clients).
    postmaster = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    redis = [pid for pid in started if comm(pid) == "redis-server"]
    servers = {pid: started[pid] for pid in (postmaster, *redis)}

    # Kill the guard first, then `up`: nobody is left to stop anything.
    os.kill(guard[0], signal.SIGKILL)
    up.send(signal.SIGKILL)

    def children() -> list[str]:
        return [c for c in processes_of(data_dir).values() if any(n in c for n in CHILDREN)]

    wait_for(lambda: not children(), 60, "the children to die with `up`")
    assert all(start_time(pid) == start for pid, start in servers.items()), \
        "the embedded servers were expected to be left running"

    # The next `up` on the same data directory stops them, says so, and serves on the
    # configured port itself.
    again = start_up(ups, data_dir, env)
    note = re.search(r"Stopped what a killed stack left running on .*", again.output)
    assert note, again.output[-3000:]
    assert f"PostgreSQL {postmaster}" in note.group(0) and f"Redis {redis[0]}" in note.group(0)
    assert not [pid for pid, start in servers.items() if start_time(pid) == start]
    assert postgres_handles(data_dir) == [again.pid]
    token = re.search(r"token: (\S+)", again.output).group(1)
    listed = requests.get(f"http://127.0.0.1:{env['ORCHESTRATOR_PORT']}/internal/jobs",
                          headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert listed.status_code == 200

    started = the_whole_stack(data_dir)
    again.send(signal.SIGTERM)
    assert again.wait_exit() == 0
    wait_until_nothing_is_left(data_dir, started)
    assert_stopped_cleanly(data_dir, env)


def test_a_second_up_on_the_same_data_refuses_in_one_line_naming_the_first(data_dir, ups):
    env = embedded_env(data_dir)
    first = start_up(ups, data_dir, env)
    started = the_whole_stack(data_dir)
    lasting = {pid: start for pid, start in started.items() if comm(pid) != "postgres"}
    postmaster = (data_dir / "postgres" / "postmaster.pid").read_text().split()[0]

    other_ports = embedded_env(data_dir)
    second = subprocess.run([CLI, "up"], env=other_ports, cwd=ROOT, capture_output=True,
                            text=True, timeout=60)

    assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "already runs" in lines[0], second.stderr
    assert f"PID {first.pid}" in lines[0] and str(data_dir) in lines[0]
    assert second.stdout == ""
    # It started nothing (one `up`, one guard, one Redis, the same PostgreSQL), and the
    # first stack runs as it did, and serves.
    now = processes_of(data_dir)
    assert [pid for pid, cmdline in now.items() if cmdline.endswith(" up")] == [first.pid]
    assert len([pid for pid, cmdline in now.items() if "-m cli.embedded" in cmdline]) == 1
    assert len([pid for pid in now if comm(pid) == "redis-server"]) == 1
    assert (data_dir / "postgres" / "postmaster.pid").read_text().split()[0] == postmaster
    assert all(start_time(pid) == start for pid, start in lasting.items())
    assert port_is_free(int(other_ports["ORCHESTRATOR_PORT"]))
    assert requests.get(f"http://127.0.0.1:{env['ORCHESTRATOR_PORT']}/healthz",
                        timeout=5).ok

    first.send(signal.SIGTERM)
    assert first.wait_exit() == 0
    wait_until_nothing_is_left(data_dir, started)
    assert_stopped_cleanly(data_dir, env)


def test_a_dead_pid_in_pgservers_handle_list_does_not_keep_postgres_running(data_dir, ups):
    env = embedded_env(data_dir)
    first = start_up(ups, data_dir, env)  # creates the database
    started = the_whole_stack(data_dir)
    first.send(signal.SIGTERM)
    first.wait_exit()
    wait_until_nothing_is_left(data_dir, started)
    # What a crash before the fix left: the dead process still listed as a user.
    dead = subprocess.Popen(["true"])
    dead.wait()
    handles = data_dir / "postgres" / ".handle_pids.json"
    handles.write_text(json.dumps([dead.pid]))

    again = start_up(ups, data_dir, env)
    assert postgres_handles(data_dir) == [again.pid]
    started = the_whole_stack(data_dir)
    again.send(signal.SIGTERM)
    assert again.wait_exit() == 0
    wait_until_nothing_is_left(data_dir, started)
    assert_stopped_cleanly(data_dir, env)
