"""The workers' stage metrics, as Prometheus reads them: real worker processes record, flush
to Redis every METRICS_FLUSH_INTERVAL, and the API's ``GET /metrics`` (the real Flask
app) serves the sum; with WORKER_METRICS_PORT a worker serves its own.

Each test is a deployment of its own (database, queue, lock and so metrics prefix), so its
counts are exactly its jobs'. Every wait has a deadline; the flush interval is short."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from cli.embedded import free_port
from orchestrator.settings import Settings
from tests.conftest import make_env
from tests.integration.conftest import Api, attempt_run, start_with_a_hang
from tests.support.downstream_server import Reply, ScriptedDownstream
from tests.support.processes import ROOT, Service, start_worker, wait_for

pytestmark = pytest.mark.integration

FLUSH = 0.2
STAGES = ("PLANNING", "PARSING", "ENRICHING", "COSTING")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def exported_names(text: str) -> set[str]:
    """Every series name a scrape exports, those of families with no series yet too."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples}
        names |= {"counter": {f"{family.name}_total"},
                  "histogram": {f"{family.name}_{p}" for p in ("bucket", "sum", "count")}
                  }.get(family.type, {family.name})
    return names


def dashboard_metric_names() -> set[str]:
    board = json.loads((ROOT / "deploy/grafana/orchestrator-dashboard.json").read_text())
    return {name for panel in board["panels"] for target in panel["targets"]
            for name in re.findall(r"\borchestrator_[a-z_]+", target["expr"])}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Deployment:
    """One deployment's environment, its API (Flask app over the real services) and the
    workers a test starts on it."""

    def __init__(self, database_url: str, redis_url: str, downstream: ScriptedDownstream,
                 log_dir: Path, **overrides: Any):
        self.env = make_env(database_url, redis_url, downstream,
                            METRICS_FLUSH_INTERVAL=FLUSH, **overrides)
        self.settings = Settings.from_env(self.env)
        self.client = create_app(self.settings).test_client()
        self.api = Api(self.client)
        self.log_dir = log_dir
        self.workers: list[Service] = []

    def worker(self, name: str, **kw: Any) -> Service:
        service = start_worker(f"{name}-{uuid.uuid4().hex[:6]}", {**self.env,
                                                                  **kw.pop("env", {})},
                               self.log_dir, **kw)
        self.workers.append(service)
        return service

    def scrape(self) -> Samples:
        response = self.client.get("/metrics")
        assert response.status_code == 200
        return parse(response.get_data(as_text=True))

    def wait_metrics(self, check: Callable[[Samples], bool], what: str,
                     scrape: Callable[[], Samples] | None = None) -> Samples:
        """Scrape until ``check`` holds (a flush or two), or fail showing the last scrape."""
        last: dict[str, Samples] = {}

        def holds() -> bool:
            last["samples"] = (scrape or self.scrape)()
            return check(last["samples"])

        try:
            wait_for(holds, 30, what, interval=FLUSH / 2)
        except AssertionError:
            shown = {k: v for k, v in last.get("samples", {}).items()
                     if k[0].startswith(("orchestrator_stage", "orchestrator_downstream",
                                         "orchestrator_lock", "orchestrator_fenced",
                                         "orchestrator_recovery"))
                     and not k[0].endswith("_bucket")}
            raise AssertionError(f"{what}; last scrape: {sorted(shown.items())}") from None
        return last["samples"]

    def stop(self) -> None:
        for service in self.workers:
            service.stop()


@pytest.fixture
def deploy(private_database: str, redis_url: str, downstream: ScriptedDownstream,
           log_dir: Path) -> Iterator[Callable[..., Deployment]]:
    made: list[Deployment] = []

    def make(**overrides: Any) -> Deployment:
        made.append(Deployment(private_database, redis_url, downstream, log_dir,
                               **overrides))
        return made[-1]

    yield make
    for deployment in made:
        deployment.stop()


def attempts(samples: Samples, stage: str, outcome: str) -> float:
    return value(samples, "orchestrator_stage_attempt_seconds_count", stage=stage,
                 outcome=outcome)


def test_the_api_serves_the_stage_metrics_of_a_few_jobs(deploy, downstream):
    # Given a worker, PARSING's timeout short, and four jobs: one that goes through, one
    # whose PLANNING is retried after a 503, one whose PARSING times out once, one whose
    # COSTING is refused for good
    d = deploy(PARSING_TIMEOUT="1")
    d.worker("metrics")
    plain, retried, timed_out, refused = (uuid.uuid4() for _ in range(4))
    downstream.script(retried, "PLANNING", {1: Reply(status=503)})
    downstream.script(timed_out, "PARSING", {1: Reply(hang_for=5)})
    downstream.script(refused, "COSTING", Reply(status=400, body={"error": "no price"}))
    # When they run to their end
    for job in (plain, retried, timed_out, refused):
        assert d.api.start(job).status_code == 202
    for job in (plain, retried, timed_out):
        d.api.wait_state(job, "COMPLETED")
    d.api.wait_state(refused, "FAILED")

    # Then /metrics counts every attempt by stage and outcome, as the jobs ran them
    expected = {("PLANNING", "success"): 4, ("PLANNING", "transient_error"): 1,
                ("PARSING", "success"): 4, ("PARSING", "timeout"): 1,
                ("ENRICHING", "success"): 4,
                ("COSTING", "success"): 3, ("COSTING", "permanent_error"): 1}

    def all_counted(samples: Samples) -> bool:
        return all(attempts(samples, stage, outcome) == n
                   for (stage, outcome), n in expected.items())

    samples = d.wait_metrics(all_counted, "the attempts of the four jobs")
    counts = {(dict(labels)["stage"], dict(labels)["outcome"]): v
              for (name, labels), v in samples.items()
              if name == "orchestrator_stage_attempt_seconds_count"}
    assert counts == expected
    # And the durations are real: the timed-out attempt took its timeout (1 s), no bucket
    # under it holds it, and the +Inf bucket is the count
    assert value(samples, "orchestrator_stage_attempt_seconds_sum", stage="PARSING",
                 outcome="timeout") >= 0.9
    assert value(samples, "orchestrator_stage_attempt_seconds_bucket", stage="PARSING",
                 outcome="timeout", le="0.5") == 0
    assert value(samples, "orchestrator_stage_attempt_seconds_bucket", stage="PARSING",
                 outcome="timeout", le="+Inf") == 1
    # And retries, timeouts and failures by stage
    for name, stage, n in [("orchestrator_stage_retries_total", "PLANNING", 1),
                           ("orchestrator_stage_retries_total", "PARSING", 1),
                           ("orchestrator_stage_timeouts_total", "PARSING", 1),
                           ("orchestrator_stage_failures_total", "COSTING", 1)]:
        assert value(samples, name, stage=stage) == n, (name, stage)
    assert sum(v for (name, _), v in samples.items()
               if name == "orchestrator_stage_retries_total") == 2
    assert sum(v for (name, _), v in samples.items()
               if name in ("orchestrator_stage_timeouts_total",
                           "orchestrator_stage_failures_total")) == 2
    # And the services' statuses by stage (the timed-out call got none)
    statuses = {(dict(labels)["stage"], dict(labels)["status"]): v
                for (name, labels), v in samples.items()
                if name == "orchestrator_downstream_responses_total"}
    assert statuses == {("PLANNING", "200"): 4, ("PLANNING", "503"): 1,
                        ("PARSING", "200"): 4, ("ENRICHING", "200"): 4,
                        ("COSTING", "200"): 3, ("COSTING", "400"): 1}
    # And nothing is in flight any more; the jobs gauge is there beside them
    assert [value(samples, "orchestrator_stages_in_flight", stage=s) for s in STAGES] == [
        0, 0, 0, 0]
    assert value(samples, "orchestrator_jobs", state="COMPLETED") == 3
    # And the Grafana dashboard names only metrics this scrape exports
    exported = exported_names(d.client.get("/metrics").get_data(as_text=True))
    assert dashboard_metric_names() <= exported, dashboard_metric_names() - exported


def test_a_stage_in_flight_shows_until_it_ends_or_its_worker_dies(deploy, downstream):
    # Given a worker whose PLANNING call hangs
    d = deploy()
    worker = d.worker("inflight")
    job = uuid.uuid4()
    release = start_with_a_hang(d.api, downstream, job, "PLANNING")
    # Then the gauge shows it while it runs
    d.wait_metrics(lambda s: value(s, "orchestrator_stages_in_flight", stage="PLANNING") == 1,
                   "PLANNING in flight")
    # And when it ends, it is gone
    release.set()
    d.api.wait_state(job, "COMPLETED")
    d.wait_metrics(lambda s: all(value(s, "orchestrator_stages_in_flight", stage=st) == 0
                                 for st in STAGES), "nothing in flight")
    # When another stage hangs and its worker is killed (no shutdown, no last flush)
    second = uuid.uuid4()
    start_with_a_hang(d.api, downstream, second, "PLANNING")
    d.wait_metrics(lambda s: value(s, "orchestrator_stages_in_flight", stage="PLANNING") == 1,
                   "the second PLANNING in flight")
    worker.kill()
    # Then its stage vanishes from the gauge once its process's key expires
    d.wait_metrics(lambda s: value(s, "orchestrator_stages_in_flight", stage="PLANNING") == 0,
                   "a dead worker's stage to leave the gauge")


def test_the_counts_of_two_worker_processes_add_up(deploy, downstream):
    # Given a worker that flushes only when it stops (its interval is an hour)
    d = deploy()
    first = d.worker("first", env={"METRICS_FLUSH_INTERVAL": "3600"})
    one = uuid.uuid4()
    assert d.api.start(one).status_code == 202
    d.api.wait_state(one, "COMPLETED")
    # When it stops, and a second worker (another process) runs a second job
    first.stop()
    d.wait_metrics(lambda s: attempts(s, "COSTING", "success") == 1,
                   "the first worker's counts, flushed at its shutdown")
    second = d.worker("second")
    two = uuid.uuid4()
    assert d.api.start(two).status_code == 202
    d.api.wait_state(two, "COMPLETED")
    # Then every series is the sum of both processes' counts
    samples = d.wait_metrics(
        lambda s: all(attempts(s, stage, "success") == 2 for stage in STAGES),
        "both jobs' attempts counted")
    assert all(value(samples, "orchestrator_downstream_responses_total", stage=stage,
                     status="200") == 2 for stage in STAGES)
    pids = {e["pid"] for w in (first, second) for e in w.events()
            if e.get("event") == "stage.succeeded"}
    assert len(pids) == 2


def test_lock_losses_fenced_writes_and_recoveries_are_counted_as_logged(deploy, downstream):
    # Given a worker A whose PARSING call hangs, frozen (SIGSTOP) past the lock's TTL, and
    # a worker B that takes the job over (recovery) and calls the service again
    d = deploy(LOCK_TTL=2, RECOVERY_STALE_AFTER=2, RECOVERY_INTERVAL=0.5,
               PARSING_TIMEOUT=120)
    a = d.worker("frozen")
    job = uuid.uuid4()
    stale, fresh = threading.Event(), threading.Event()
    downstream.script(job, "PARSING", {1: Reply(release=stale, hang_for=600),
                                       2: Reply(release=fresh, hang_for=600)})
    try:
        assert d.api.start(job).status_code == 202
        first = downstream.wait_call(job, "PARSING", 1)
        a.signal(signal.SIGSTOP)
        try:
            b = d.worker("taker")
            downstream.wait_call(job, "PARSING", 2, timeout=60)
            # When A wakes up to its stale answer
            stale.set()
            downstream.wait_ended(first)
        finally:
            a.signal(signal.SIGCONT)
        wait_for(lambda: attempt_run(a, job, "PARSING", 1), 60, "A's PARSING run to end")
    finally:
        fresh.set()
    d.api.wait_state(job, "COMPLETED", timeout=60)

    # Then the metrics count exactly what the workers logged: A's lock losses and fenced
    # writes, B's (and A's) recovery resumes
    def logged(event: str) -> int:
        return sum(1 for w in (a, b) for e in w.events()
                   if e.get("event") == event and e.get("stage", "PARSING") == "PARSING")

    def as_logged(s: Samples) -> bool:
        return (value(s, "orchestrator_lock_losses_total", stage="PARSING")
                == logged("lock.lost")
                and value(s, "orchestrator_fenced_writes_total", stage="PARSING")
                == logged("stage.fenced_out")
                and value(s, "orchestrator_recovery_resumes_total")
                == logged("recovery.resume")
                and attempts(s, "COSTING", "success") == 1)

    samples = d.wait_metrics(as_logged, "the metrics to match the logs")
    assert value(samples, "orchestrator_lock_losses_total", stage="PARSING") >= 1
    assert value(samples, "orchestrator_recovery_resumes_total") >= 1


def test_a_stage_ending_during_a_warm_shutdown_is_counted(deploy, downstream):
    # Given a worker that flushes only when it stops, with a PLANNING call in flight
    d = deploy()
    worker = d.worker("draining", env={"METRICS_FLUSH_INTERVAL": "3600"})
    job = uuid.uuid4()
    release = start_with_a_hang(d.api, downstream, job, "PLANNING")
    # When it is told to stop (SIGTERM: a warm shutdown lets the stage finish) and the
    # service answers only then
    worker.signal(signal.SIGTERM)
    wait_for(lambda: "Warm shutdown" in worker.log_path.read_text(), 30,
             "the worker to begin its warm shutdown")
    release.set()
    worker.proc.wait(timeout=60)
    # Then the attempt that ended while the pool drained is counted, and not in flight
    d.wait_metrics(lambda s: attempts(s, "PLANNING", "success") == 1
                   and value(s, "orchestrator_stages_in_flight", stage="PLANNING") == 0,
                   "the drained attempt counted")


def test_a_worker_serves_its_own_metrics_on_worker_metrics_port(deploy, downstream):
    # Given a prefork worker (stages in its pool children) with WORKER_METRICS_PORT
    port = free_port()
    d = deploy(WORKER_METRICS_PORT=port)
    d.worker("own-port", pool="prefork")
    base = f"http://127.0.0.1:{port}"
    # When a job goes through, one stage hanging a while
    job = uuid.uuid4()
    release = start_with_a_hang(d.api, downstream, job, "ENRICHING")

    def own() -> Samples:
        return parse(requests.get(f"{base}/metrics", timeout=5).text)

    # Then the worker's own endpoint shows its stage in flight
    d.wait_metrics(lambda s: value(s, "orchestrator_stages_in_flight", stage="ENRICHING") == 1,
                   "ENRICHING in flight on the worker's port", scrape=own)
    release.set()
    d.api.wait_state(job, "COMPLETED")
    # And the attempts its pool children ran, as the API does
    for scrape in (own, None):
        d.wait_metrics(lambda s: all(attempts(s, stage, "success") == 1 for stage in STAGES)
                       and value(s, "orchestrator_stages_in_flight", stage="ENRICHING") == 0,
                       "the job's attempts", scrape=scrape)


@pytest.mark.parametrize(("variable", "bad"), [("WORKER_METRICS_PORT", "nine"),
                                               ("WORKER_METRICS_PORT", "70000"),
                                               ("METRICS_FLUSH_INTERVAL", "0")])
def test_a_bad_metrics_setting_stops_the_worker_naming_it(database_url, redis_url,
                                                          downstream, variable, bad):
    env = make_env(database_url, redis_url, downstream, **{variable: bad})
    done = subprocess.run([sys.executable, "-m", "cli", "worker"], env={**os.environ, **env},
                          cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert variable in done.stderr + done.stdout


def test_a_worker_of_a_few_processes_serves_their_sum_on_its_port(deploy, downstream):
    # Given a worker of two processes (one stage in flight each), with WORKER_METRICS_PORT
    port = free_port()
    d = deploy(WORKER_METRICS_PORT=port, WORKER_PROCESSES=2)
    worker = d.worker("two-processes", concurrency=2)
    wait_for(lambda: len(ready_pids(worker)) == 2, 60, "both processes to be ready")
    base = f"http://127.0.0.1:{port}"

    def own() -> Samples:
        return parse(requests.get(f"{base}/metrics", timeout=5).text)

    # When two jobs hang in PLANNING, so that each process runs one
    jobs = [uuid.uuid4() for _ in range(2)]
    releases = [start_with_a_hang(d.api, downstream, job, "PLANNING") for job in jobs]
    running = {e["pid"] for e in worker.events() if e.get("event") == "stage.started"}
    assert running == ready_pids(worker)
    # Then the supervisor's endpoint shows both in flight
    d.wait_metrics(lambda s: value(s, "orchestrator_stages_in_flight", stage="PLANNING") == 2,
                   "both PLANNING stages in flight on the worker's port", scrape=own)
    for release in releases:
        release.set()
    for job in jobs:
        d.api.wait_state(job, "COMPLETED")
    # And every attempt of both processes, as the API does
    for scrape in (own, None):
        d.wait_metrics(lambda s: all(attempts(s, stage, "success") == 2 for stage in STAGES)
                       and value(s, "orchestrator_stages_in_flight", stage="PLANNING") == 0,
                       "both jobs' attempts", scrape=scrape)


def ready_pids(worker: Service) -> set[int]:
    return {e["pid"] for e in worker.events() if e.get("event") == "worker.ready"}
