"""`orchestrator worker` as a few processes (cli.workers): one Celery worker per process,
sharing the stages in flight; a process killed is replaced and its job recovered; killing
the supervisor takes its processes with it; SIGTERM lets each finish its stage. Real
processes, real signals; the lock's TTL and recovery short through configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest

from api.app import create_app
from cli.workers import RESTART_AFTER
from orchestrator.settings import Settings
from tests.conftest import make_env
from tests.integration.conftest import (
    HAPPY_PATH,
    Api,
    stage_rows,
    start_with_a_hang,
    transitions,
)
from tests.support.processes import Service, start_worker, wait_for

pytestmark = pytest.mark.integration

FAST_RECOVERY = {"LOCK_TTL": 2, "RECOVERY_STALE_AFTER": 2, "RECOVERY_INTERVAL": 0.5,
                 **{f"{s}_TIMEOUT": 120 for s in ("PLANNING", "PARSING", "ENRICHING",
                                                  "COSTING")}}


@pytest.fixture
def deployment(private_database, redis_url, downstream, log_dir):
    env = make_env(private_database, redis_url, downstream, **FAST_RECOVERY)
    api = Api(create_app(Settings.from_env(env)).test_client())
    started: list[Service] = []

    def worker(processes: int, concurrency: int) -> Service:
        service = start_worker(f"procs-{uuid.uuid4().hex[:6]}",
                               {**env, "WORKER_PROCESSES": str(processes)}, log_dir,
                               concurrency=concurrency)
        started.append(service)
        return service

    yield api, worker
    for service in started:
        service.stop()


def ready(worker: Service) -> list[dict]:
    return [e for e in worker.events() if e.get("event") == "worker.ready"]


def wait_ready(worker: Service, count: int) -> list[dict]:
    return wait_for(lambda: r if len(r := ready(worker)) >= count else None, 60,
                    f"{count} worker processes to be ready")


def started_by(worker: Service, job_id: object, stage: str) -> int:
    """The pid of the process that started ``stage`` of the job."""
    return wait_for(lambda: next((e["pid"] for e in worker.events()
                                  if e.get("event") == "stage.started"
                                  and e.get("job_id") == str(job_id)
                                  and e.get("stage") == stage), None),
                    30, f"{stage} of {job_id} to start")


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by whoever adopted it, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_each_process_is_a_celery_worker_of_its_own_sharing_the_stages(deployment,
                                                                      downstream):
    api, worker = deployment
    # Given a worker of two processes holding four stages in flight in all
    service = worker(processes=2, concurrency=4)
    processes = wait_ready(service, 2)
    # Then each is a Celery worker of its own name, under the supervisor
    assert len({e["pid"] for e in processes}) == 2
    assert service.proc.pid not in {e["pid"] for e in processes}
    names = sorted(e["hostname"].split("@")[0] for e in processes)
    assert names == [f"{service.name}-1", f"{service.name}-2"]
    assert service.has_event("worker.processes", processes=2, concurrency=4, shares=[2, 2])
    # When four jobs hang in PLANNING
    jobs = [uuid.uuid4() for _ in range(4)]
    releases = [start_with_a_hang(api, downstream, job, "PLANNING") for job in jobs]
    # Then all four are in flight at once, two in each process
    pids = [started_by(service, job, "PLANNING") for job in jobs]
    assert sorted(pids.count(pid) for pid in set(pids)) == [2, 2]
    for release in releases:
        release.set()
    # And every job goes through exactly once
    for job in jobs:
        done = api.wait_state(job, "COMPLETED", "FAILED", timeout=60)
        assert transitions(done) == HAPPY_PATH
        assert [s["status"] for s in done["stages"]] == ["SUCCESS"] * 4


def test_a_process_killed_is_replaced_and_its_job_completes_exactly_once(deployment,
                                                                         downstream):
    api, worker = deployment
    service = worker(processes=2, concurrency=2)
    wait_ready(service, 2)
    # Given a job whose PARSING hangs in one of the two processes
    job = uuid.uuid4()
    hang = start_with_a_hang(api, downstream, job, "PARSING")
    lost = downstream.call(job, "PARSING", 1)
    victim = started_by(service, job, "PARSING")
    # When that process alone is killed with SIGKILL
    try:
        os.kill(victim, signal.SIGKILL)
        downstream.wait_ended(lost)
    finally:
        hang.set()
    # Then the supervisor starts another in its place, and stays up
    service.wait_event("worker.process_exited", timeout=30, child_pid=victim,
                       exit_code=-signal.SIGKILL, restarting=True)
    # (killed within RESTART_AFTER of its start: restarted that long after it, not at once)
    exited = next(e for e in service.events() if e.get("event") == "worker.process_exited")
    assert exited["restart_in_seconds"] == pytest.approx(
        max(0.0, RESTART_AFTER - exited["ran_seconds"]), abs=0.2)
    replaced = wait_ready(service, 3)
    assert len({e["pid"] for e in replaced}) == 3
    assert service.proc.poll() is None
    # And the job is resumed once the lock expires and completes, PARSING run twice
    done = api.wait_state(job, "COMPLETED", "FAILED", timeout=60)
    assert transitions(done) == HAPPY_PATH
    assert stage_rows(done, "PARSING") == [(1, "FAILED", "worker lost"), (2, "SUCCESS", None)]
    assert [c.attempt for c in downstream.calls_for(job, "PARSING")] == [1, 2]


def test_killing_the_supervisor_takes_its_processes_with_it(deployment, downstream):
    api, worker = deployment
    service = worker(processes=2, concurrency=2)
    children = {e["pid"] for e in wait_ready(service, 2)}
    # Given a job whose PLANNING hangs in one of them
    job = uuid.uuid4()
    hang = start_with_a_hang(api, downstream, job, "PLANNING")
    lost = downstream.call(job, "PLANNING", 1)
    # When the supervisor alone is killed with SIGKILL
    try:
        os.kill(service.proc.pid, signal.SIGKILL)
        service.proc.wait(timeout=10)
        # Then its processes die too (no orphan goes on running stages), the call's
        # connection with them
        wait_for(lambda: not any(alive(pid) for pid in children), 30,
                 "the worker's processes to die with it")
        downstream.wait_ended(lost)
    finally:
        hang.set()
    assert lost.disconnected_at is not None and lost.replied_at is None
    # And a new worker resumes the job, which completes exactly once
    worker(processes=1, concurrency=2)
    done = api.wait_state(job, "COMPLETED", "FAILED", timeout=60)
    assert transitions(done) == HAPPY_PATH
    assert stage_rows(done, "PLANNING") == [(1, "FAILED", "worker lost"),
                                            (2, "SUCCESS", None)]


def test_sigterm_lets_every_process_finish_its_stage_then_stops(deployment, downstream):
    api, worker = deployment
    service = worker(processes=2, concurrency=2)
    wait_ready(service, 2)
    # Given two jobs in PLANNING, one in each process, answering only when released
    jobs = [uuid.uuid4() for _ in range(2)]
    releases = [start_with_a_hang(api, downstream, job, "PLANNING") for job in jobs]
    assert len({started_by(service, job, "PLANNING") for job in jobs}) == 2
    # When the supervisor alone gets SIGTERM (as from `docker stop` or Kubernetes)
    os.kill(service.proc.pid, signal.SIGTERM)
    service.wait_event("worker.stopping", timeout=30, signal="SIGTERM")
    for release in releases:
        release.set()
    # Then each process finishes its stage, and the worker exits 0 once both have
    assert service.proc.wait(timeout=60) == 0
    assert service.has_event("worker.stopped", exit_code=0)
    for job in jobs:
        done = api.job(job)
        assert stage_rows(done, "PLANNING") == [(1, "SUCCESS", None)]
        assert done["current_state"] == "PARSING"
        assert not downstream.calls_for(job, "PARSING")


def test_sigquit_reaches_every_process_as_celerys_cold_shutdown(deployment, downstream):
    api, worker = deployment
    service = worker(processes=2, concurrency=2)
    wait_ready(service, 2)
    # Given a job whose PLANNING hangs in one of the processes
    job = uuid.uuid4()
    hang = start_with_a_hang(api, downstream, job, "PLANNING")
    try:
        # When the supervisor alone gets SIGQUIT
        os.kill(service.proc.pid, signal.SIGQUIT)
        service.wait_event("worker.stopping", timeout=30, signal="SIGQUIT")
        # Then each process starts Celery's cold shutdown (its own words, on stdout)
        wait_for(lambda: service.log_path.read_text().count(COLD_SHUTDOWN) == 2, 30,
                 "both processes' cold shutdown")
    finally:
        hang.set()
    # And once the stage's thread is done (a thread cannot be killed), the worker exits
    service.proc.wait(timeout=60)
    assert service.has_event("worker.stopped")


#: What Celery's worker prints when a cold shutdown (SIGQUIT) begins.
COLD_SHUTDOWN = "worker: Hitting Ctrl+C again will terminate all running tasks!"


def test_a_process_that_cannot_start_stops_the_worker_with_its_exit_code(
        downstream, private_database, redis_url):
    # Given a worker of two processes whose children cannot start: an unknown Celery
    # option, which the supervisor passes on to each
    env = {**make_env(private_database, redis_url, downstream), "WORKER_PROCESSES": "2"}
    done = subprocess.run([sys.executable, "-m", "cli", "worker", "--no-such-option"],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)
    # Then the worker exits non-zero as one process would, and says why
    assert done.returncode != 0
    assert "no-such-option" in done.stderr + done.stdout
    assert '"worker.process_exited"' in done.stdout + done.stderr


def test_sighup_restarts_each_process_and_the_worker_stays(deployment, downstream):
    api, worker = deployment
    service = worker(processes=2, concurrency=2)
    children = {e["pid"] for e in wait_ready(service, 2)}
    # When the supervisor gets SIGHUP
    os.kill(service.proc.pid, signal.SIGHUP)
    # Then each process restarts itself in place (Celery's SIGHUP: same pid, ready again)
    service.wait_event("worker.reloading", timeout=30, processes=2)
    again = wait_ready(service, 4)
    assert {e["pid"] for e in again} == children
    assert service.proc.poll() is None
    # And the worker still runs jobs
    job = uuid.uuid4()
    assert api.start(job).status_code == 202
    assert transitions(api.wait_state(job, "COMPLETED", "FAILED", timeout=60)) == HAPPY_PATH


def test_each_process_takes_what_it_made_at_start_up_out_of_the_collector(deployment):
    _, worker = deployment
    service = worker(processes=2, concurrency=4)
    # (Celery, the app and the imports: a hundred thousand objects and more)
    assert [e["gc_frozen"] > 50_000 for e in wait_ready(service, 2)] == [True, True]


def test_each_process_counts_the_whole_worker_in_its_connection_budget(deployment):
    _, worker = deployment
    service = worker(processes=2, concurrency=4)
    wait_ready(service, 2)
    budgets = wait_for(lambda: b if len(b := [e for e in service.events()
                                               if e.get("event") == "worker.database_budget"])
                       == 2 else None, 30, "both processes' connection budget")
    # Each may open its share + 2 + the relay's 2; the worker, both processes' sum
    assert [(b["concurrency"], b["may_open"], b["worker_processes"], b["worker_may_open"])
            for b in budgets] == [(2, 6, 2, 12)] * 2


def test_worker_processes_is_for_the_threads_pool_a_prefork_worker_ignores_it(
        private_database, redis_url, downstream, log_dir):
    # Given WORKER_PROCESSES=2 deployment-wide, and a worker started with -P prefork
    env = make_env(private_database, redis_url, downstream, WORKER_PROCESSES=2)
    api = Api(create_app(Settings.from_env(env)).test_client())
    service = start_worker(f"prefork-{uuid.uuid4().hex[:6]}", env, log_dir, pool="prefork")
    try:
        # Then it is one Celery worker (its pool's children are Celery's), and runs jobs
        assert len(ready(service)) == 1
        assert not service.has_event("worker.processes")
        job = uuid.uuid4()
        assert api.start(job).status_code == 202
        assert transitions(api.wait_state(job, "COMPLETED", "FAILED", timeout=60)) == HAPPY_PATH
    finally:
        service.stop()
