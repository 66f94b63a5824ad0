"""How `orchestrator worker` sizes its processes (cli.workers): the CPUs it may use, the
split of WORKER_CONCURRENCY, the children's node names, WORKER_PROCESSES."""

from __future__ import annotations

import pytest

from cli import workers
from cli.workers import cgroup_cpu_quota, child_hostname, process_count, shares
from orchestrator.errors import ConfigError
from orchestrator.settings import Settings, parse_processes


@pytest.mark.parametrize(("total", "processes", "expected"), [
    (100, 2, [50, 50]), (7, 2, [4, 3]), (10, 4, [3, 3, 2, 2]), (1, 1, [1]), (5, 1, [5]),
])
def test_concurrency_is_shared_out_evenly_and_in_full(total, processes, expected):
    assert shares(total, processes) == expected
    assert sum(shares(total, processes)) == total


@pytest.mark.parametrize(("requested", "cpus", "concurrency", "expected"), [
    (None, 2, 100, 2),    # auto: one per CPU
    (None, 16, 100, 4),   # at most AUTO_MAX_PROCESSES
    (None, 1, 100, 1),
    (None, 8, 3, 3),      # never more processes than stages in flight
    (3, 1, 100, 3),       # asked for: as asked, CPUs or not
    (6, 2, 4, 4),
])
def test_process_count(monkeypatch, requested, cpus, concurrency, expected):
    monkeypatch.setattr(workers, "usable_cpus", lambda: cpus)
    assert process_count(requested, concurrency) == expected


@pytest.mark.parametrize(("hostname", "expected"), [
    (None, "celery-1@%h"), ("pool@%h", "pool-1@%h"), ("w@host.example", "w-1@host.example"),
    ("host.example", "celery-1@host.example"),
])
def test_each_process_has_its_own_node_name(hostname, expected):
    assert child_hostname(hostname, 1) == expected


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "50000 100000\n"}, 0.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    ({}, None),
])
def test_a_cgroup_cpu_limit_is_read_v2_or_v1(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path, tmp_path / "no-membership") == expected


@pytest.mark.parametrize(("membership", "files", "expected"), [
    # a systemd unit's CPUQuota= on a host (cgroup v2): the unit's own cgroup
    ("0::/system.slice/worker.service\n",
     {"cpu.max": "max 100000\n", "system.slice/worker.service/cpu.max": "100000 100000\n"},
     1.0),
    # a limit on the slice above binds the unit under it; the smallest one wins
    ("0::/a/b\n", {"a/cpu.max": "200000 100000\n", "a/b/cpu.max": "max 100000\n"}, 2.0),
    ("0::/a/b\n", {"a/cpu.max": "200000 100000\n", "a/b/cpu.max": "50000 100000\n"}, 0.5),
    # cgroup v1: the cpu controller's own path
    ("4:memory:/x\n2:cpu,cpuacct:/docker/abc\n0::/\n",
     {"cpu/docker/abc/cpu.cfs_quota_us": "150000\n",
      "cpu/docker/abc/cpu.cfs_period_us": "100000\n"}, 1.5),
    # a path that does not exist under the root: the root's own, if any
    ("0::/elsewhere\n", {"cpu.max": "300000 100000\n"}, 3.0),
])
def test_the_process_own_cgroup_and_its_ancestors_bound_it(tmp_path, membership, files,
                                                            expected):
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "self").write_text(membership)
    assert cgroup_cpu_quota(root, tmp_path / "self") == expected


def test_a_cpu_limit_bounds_the_usable_cpus_rounded_up(tmp_path, monkeypatch):
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    alone = tmp_path / "no-membership"
    assert workers.usable_cpus(tmp_path, alone) == 4
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert workers.usable_cpus(tmp_path, alone) == 2
    (tmp_path / "cpu.max").write_text("20000 100000\n")
    assert workers.usable_cpus(tmp_path, alone) == 1


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", None), ("auto", None), (" AUTO ", None), ("1", 1), ("64", 64),
])
def test_worker_processes_setting(value, expected):
    environ = {} if value is None else {"WORKER_PROCESSES": value}
    assert Settings.from_env(environ).worker_processes == expected


@pytest.mark.parametrize("value", ["0", "65", "-1", "two", "1.5"])
def test_a_wrong_worker_processes_names_itself(value):
    with pytest.raises(ConfigError, match="WORKER_PROCESSES.*'auto' or an integer"):
        Settings.from_env({"WORKER_PROCESSES": value})
    with pytest.raises(ConfigError, match="--processes"):
        parse_processes("--processes", value)

