"""Terminal-event notifications through the outbox, end to end: real workers (whose relay
delivers), a real receiver in the test process that fails, goes away and comes back, and
a worker killed with SIGKILL mid-delivery. Every terminal job is announced exactly once
as an event (one row, one ``event_id`` on every try), signed with NOTIFY_SECRET; no
non-terminal job is; the job detail and ``/metrics`` show where delivery stands."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from api.app import create_app
from orchestrator.outbox import SIGNATURE_HEADER, signature, verify_signature
from orchestrator.settings import Settings
from tests.conftest import make_env
from tests.integration.conftest import Api, start_with_a_hang
from tests.support.downstream_server import Reply
from tests.support.notify_receiver import NotifyReceiver
from tests.support.processes import Service, start_worker, wait_for

pytestmark = pytest.mark.integration

SECRET = "notify-secret-" + uuid.uuid4().hex[:8]
FAST = {"NOTIFY_SECRET": SECRET, "NOTIFY_TIMEOUT": 1, "NOTIFY_RETRY_BASE": 0.2,
        "NOTIFY_RETRY_MAX": 1, "OUTBOX_INTERVAL": 0.2}


def events_of(database_url: str, job_id: object) -> list[dict[str, Any]]:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cur:
        cur.execute("SELECT event_id::text, state, status, attempts FROM job_events"
                    " WHERE job_id = %s", (str(job_id),))
        rows = [dict(zip(("event_id", "state", "status", "attempts"), r, strict=True))
                for r in cur.fetchall()]
    connection.close()
    return rows


def gauge(api: Api, name: str) -> float:
    text = api.client.get("/metrics").get_data(as_text=True)
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


@pytest.fixture(scope="module")
def receiver() -> Iterator[NotifyReceiver]:
    server = NotifyReceiver().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def notify_env(module_database: str, redis_url: str, downstream: Any,
               receiver: NotifyReceiver) -> dict[str, str]:
    return make_env(module_database, redis_url, downstream, NOTIFY_URL=receiver.url, **FAST)


@pytest.fixture(scope="module")
def notify_api(notify_env: dict[str, str]) -> Api:
    return Api(create_app(Settings.from_env(notify_env)).test_client())


@pytest.fixture(scope="module")
def notify_worker(notify_env: dict[str, str], log_dir: Any) -> Iterator[Service]:
    service = start_worker("notify-worker", notify_env, log_dir)
    yield service
    service.stop()


def test_each_terminal_job_is_announced_once_signed_and_no_other_is(
        notify_api, notify_worker, receiver, downstream, module_database):
    # Given a job that completes, one that fails at PARSING and one held in PARSING
    done, failed, running = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    downstream.script(failed, "PARSING", Reply(status=400, body={"error": "bad plan"}))
    release = start_with_a_hang(notify_api, downstream, running, "PARSING")
    try:
        assert notify_api.start(done).status_code == 202
        assert notify_api.start(failed).status_code == 202
        # When they end, the receiver is told once each, with a signature of the raw body
        for job_id, state in ((done, "COMPLETED"), (failed, "FAILED")):
            wait_for(lambda j=job_id: receiver.acknowledged(j), 30, f"{state} announced")
            (got,) = receiver.for_job(job_id)
            assert got.headers[SIGNATURE_HEADER] == signature(SECRET, got.body)
            assert verify_signature(SECRET, got.body, got.headers[SIGNATURE_HEADER])
            assert not verify_signature("another-secret", got.body,
                                        got.headers[SIGNATURE_HEADER])
            job = notify_api.job(job_id)
            (event,) = events_of(module_database, job_id)
            assert got.payload == {
                "event_id": event["event_id"], "job_id": str(job_id), "state": state,
                "error_message": job["error_message"],
                "plan_reference": job["plan_reference"],
                "result_reference": job["result_reference"],
                "completed_at": job["completed_at"], "redriven_from": None}
            # And the detail says it was delivered
            wait_for(lambda j=job_id: notify_api.job(j)["notification"]["status"]
                     == "delivered", 10, "the delivery to be recorded")
            note = notify_api.job(job_id)["notification"]
            assert note["event_id"] == event["event_id"] and note["attempts"] == 1
            assert note["delivered_at"] and note["last_error"] is None
            assert notify_worker.has_event("notify.delivered", job_id=str(job_id),
                                           event_id=event["event_id"])
        assert notify_api.job(done)["result_reference"] == f"result-{done}"
        assert "bad plan" in (notify_api.job(failed)["error_message"] or "")
        # And the job still in PARSING has no event and no notification
        assert events_of(module_database, running) == []
        assert receiver.for_job(running) == []
        assert notify_api.job(running)["notification"] is None
    finally:
        release.set()
    # (and once it completes, it gets its one event too)
    notify_api.wait_state(running, "COMPLETED")
    wait_for(lambda: receiver.acknowledged(running), 30, "the last job announced")
    assert len(events_of(module_database, running)) == 1


def test_a_failing_then_absent_receiver_gets_the_same_event_once_it_answers(
        notify_api, notify_worker, receiver, module_database):
    # Given a receiver that answers 500 twice
    job_id = uuid.uuid4()
    with receiver.lock:
        receiver.script = [500, 500]
    assert notify_api.start(job_id).status_code == 202
    wait_for(lambda: len(receiver.for_job(job_id)) >= 2, 30, "two failed tries")
    # When it goes away altogether (its port closed)
    receiver.stop()
    try:
        # Then the event stays pending, retried with backoff, and the detail and the
        # backlog gauge say so
        wait_for(lambda: (lambda n: n["status"] == "pending" and n["attempts"] >= 4
                          and "ConnectionError" in (n["last_error"] or ""))(
            notify_api.job(job_id)["notification"]), 30, "tries against a closed port")
        assert gauge(notify_api, "orchestrator_notifications_pending") >= 1
        failures = [e for e in notify_worker.events()
                    if e.get("event") == "notify.failed" and e.get("job_id") == str(job_id)]
        assert [e["attempt"] for e in failures[:2]] == [1, 2]
        assert "HTTP 500" in failures[0]["error"]
        assert all(0 <= e["delay"] <= 1 for e in failures)
    finally:
        receiver.start()  # the same port again
    # When it comes back, the event is delivered: the same id and bytes on every try
    wait_for(lambda: receiver.acknowledged(job_id), 30, "the delivery after the outage")
    tries = receiver.for_job(job_id)
    assert len({t.body for t in tries}) == 1
    assert len({t.payload["event_id"] for t in tries}) == 1
    (event,) = events_of(module_database, job_id)
    assert tries[0].payload["event_id"] == event["event_id"]
    wait_for(lambda: notify_api.job(job_id)["notification"]["status"] == "delivered", 10,
             "the delivery to be recorded")
    assert notify_api.job(job_id)["notification"]["attempts"] >= 3
    assert len(receiver.acknowledged(job_id)) == 1


def test_a_relay_killed_mid_delivery_leaves_the_event_to_another(
        private_database, redis_url, downstream, log_dir):
    receiver = NotifyReceiver().start()
    env = make_env(private_database, redis_url, downstream, NOTIFY_URL=receiver.url, **FAST)
    api = Api(create_app(Settings.from_env(env)).test_client())
    a = start_worker("notify-a", env, log_dir)
    b: Service | None = None
    try:
        # Given worker A delivering a job's event to a receiver that holds the request
        job_id = uuid.uuid4()
        receiver.hang = threading.Event()
        assert api.start(job_id).status_code == 202
        wait_for(lambda: receiver.for_job(job_id), 30, "A's delivery to arrive")
        # When A is killed mid-delivery (SIGKILL), and the receiver recovers
        a.kill()
        receiver.hang.set()
        receiver.hang = None
        b = start_worker("notify-b", env, log_dir)
        # Then B delivers the same event once its lease ends: nothing lost, nothing new
        wait_for(lambda: receiver.acknowledged(job_id), 30, "B's delivery")
        tries = receiver.for_job(job_id)
        assert len(tries) >= 2 and len({t.payload["event_id"] for t in tries}) == 1
        (event,) = events_of(private_database, job_id)
        assert event["event_id"] == tries[0].payload["event_id"]
        wait_for(lambda: b is not None and b.has_event("notify.delivered",
                                                       job_id=str(job_id)), 10,
                 "B to log the delivery")
        assert api.job(job_id)["notification"]["status"] == "delivered"
    finally:
        a.stop()
        if b is not None:
            b.stop()
        receiver.stop()


def test_without_notify_url_events_are_skipped_not_left_pending(api, worker, database_url):
    # Given the shared worker, which has no NOTIFY_URL
    job_id = uuid.uuid4()
    assert api.start(job_id).status_code == 202
    api.wait_state(job_id, "COMPLETED")
    # Then its event is marked skipped with the reason, so no backlog builds up
    wait_for(lambda: (api.job(job_id)["notification"] or {}).get("status") == "skipped",
             10, "the event to be skipped")
    note = api.job(job_id)["notification"]
    assert note["last_error"] == "undeliverable: NOTIFY_URL unset"
    assert worker.has_event("notify.skipped", job_id=str(job_id))
