"""The outboxes' domain side: what a terminal-event notification says and how it is
signed, and the relay's passes (deliver due events, send due enqueues) written against
the ports, so that the same code runs in a worker's relay thread and in tests.

Two outboxes, both rows committed in the transaction of the change they announce:

- a **terminal event** per job that reached COMPLETED or FAILED, inserted by a trigger
  on ``jobs`` (migration 0005), delivered at least once by ``POST NOTIFY_URL`` with the
  same ``event_id`` and the same bytes every time, signed ``X-Orchestrator-Signature:
  sha256=<hex HMAC-SHA256 of the body with NOTIFY_SECRET>``, retried with capped
  exponential backoff (full jitter) on anything but a 2xx, for as long as it takes;
- an **enqueue** per started job, inserted by :func:`orchestrator.service.start_job`
  with the move to PLANNING: the API sends the chain right after the commit and deletes
  the row; the relay sends a row left behind (broker down, API killed in between).

A pass claims its rows ``FOR UPDATE SKIP LOCKED`` and leases them (pushes their
``next_attempt_at`` past the time the pass may take) in one short transaction, then
works without holding a transaction: many relays share the work, and a relay killed
mid-delivery leaves its rows to the next one once their lease ends.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any

from orchestrator.backoff import retry_delay
from orchestrator.logs import job_context, log_event
from orchestrator.models import TerminalEvent, iso
from orchestrator.ports import Enqueuer, UnitOfWork

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Orchestrator-Signature"
#: What a skipped event's ``last_error`` says.
NOT_CONFIGURED = "undeliverable: NOTIFY_URL unset"


def event_payload(event: TerminalEvent) -> dict[str, Any]:
    return {
        "event_id": str(event.event_id),
        "job_id": str(event.job_id),
        "state": event.state,
        "error_message": event.error_message,
        "plan_reference": event.plan_reference,
        "result_reference": event.result_reference,
        "completed_at": iso(event.completed_at),
        "redriven_from": str(event.redriven_from) if event.redriven_from else None,
    }


def event_body(event: TerminalEvent) -> bytes:
    """The request body: compact JSON with sorted keys, so every try sends the same bytes
    (the row it comes from never changes)."""
    return json.dumps(event_payload(event), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def signature(secret: str, body: bytes) -> str:
    """The ``X-Orchestrator-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return header is not None and hmac.compare_digest(signature(secret, body), header)


class DeliveryFailed(Exception):
    """A try that got no 2xx: the status and a short reason, or the connection error."""


@dataclass(frozen=True)
class NotifyPolicy:
    """How a relay delivers: the retry backoff, the batch it claims, one try's timeout."""

    retry_base: float
    retry_max: float
    timeout: float
    batch: int = 20

    def delay(self, attempts: int) -> float:
        """Seconds before the next try after ``attempts`` failed ones (full jitter)."""
        return retry_delay(max(attempts, 1), base=self.retry_base, maximum=self.retry_max,
                           jitter=True)


def deliver_events(uow: UnitOfWork, post: Any, secret: str, policy: NotifyPolicy) -> int:
    """One delivery pass: claim the due events and POST each; the number delivered.
    ``post(body, headers)`` raises :class:`DeliveryFailed` (or any error) unless the
    receiver answered 2xx."""
    with uow() as jobs:
        events = jobs.claim_events(policy.batch, policy.timeout)
    delivered = 0
    for event in events:
        body = event_body(event)
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADER: signature(secret, body),
                   "X-Orchestrator-Event-ID": str(event.event_id)}
        with job_context(event.job_id, event.correlation_id):
            try:
                post(body, headers)
            except Exception as exc:
                error = str(exc) if isinstance(exc, DeliveryFailed) else repr(exc)
                delay = policy.delay(event.attempts)
                with uow(single=True) as jobs:
                    jobs.event_failed(event.event_id, error[:1000], delay)
                log_event(log, "notify.failed", logging.WARNING, event_id=str(event.event_id),
                          attempt=event.attempts, delay=round(delay, 3), error=error,
                          state=event.state)
                continue
            with uow(single=True) as jobs:
                jobs.event_delivered(event.event_id)
            delivered += 1
            log_event(log, "notify.delivered", event_id=str(event.event_id),
                      attempt=event.attempts, state=event.state)
    return delivered


def skip_events(uow: UnitOfWork, limit: int = 500) -> int:
    """With no NOTIFY_URL: mark the due events skipped (the backlog stays empty and each
    job's detail says why it was not announced); the number skipped."""
    with uow() as jobs:
        skipped = jobs.skip_events(limit, NOT_CONFIGURED)
    for event_id, job_id, correlation_id in skipped:
        with job_context(job_id, correlation_id):
            log_event(log, "notify.skipped", event_id=str(event_id), reason=NOT_CONFIGURED)
    return len(skipped)


def send_enqueues(uow: UnitOfWork, enqueue: Enqueuer, *, retry_after: float,
                  lease: float, limit: int = 100) -> int:
    """One pass over the enqueues left unsent: send each owed chain, or drop the row of a
    job a chain already reached; the number sent. The first send that fails (the broker
    is down) ends the pass: the rest are put back for ``retry_after`` seconds."""
    with uow() as jobs:
        pending = jobs.claim_enqueues(limit, lease)
    sent = 0
    for n, row in enumerate(pending):
        with job_context(row.job_id, row.correlation_id):
            if row.obsolete:
                with uow(single=True) as jobs:
                    jobs.enqueue_sent(row.job_id)
                log_event(log, "outbox.obsolete", stage=row.from_state.value,
                          state=row.current_state.value,
                          reason="a chain reached the job already")
                continue
            try:
                enqueue(row.job_id, row.from_state, row.correlation_id)
            except Exception as exc:
                with uow() as jobs:
                    for left in pending[n:]:
                        jobs.enqueue_failed(left.job_id, repr(exc)[:1000], retry_after)
                log_event(log, "outbox.send_failed", logging.WARNING,
                          stage=row.from_state.value, attempt=row.attempts,
                          delay=retry_after, error=repr(exc), left=len(pending) - n)
                return sent
            with uow(single=True) as jobs:
                jobs.enqueue_sent(row.job_id)
            sent += 1
            log_event(log, "outbox.sent", stage=row.from_state.value, attempt=row.attempts,
                      by="relay")
    return sent
