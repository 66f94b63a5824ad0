"""The outboxes' backlog, read cheaply for ``/metrics``: both counts come from small
indexes (``job_events_pending`` covers only the pending events; ``job_enqueues`` holds
only the chains not yet sent), so a scrape costs O(backlog), not O(jobs)."""

from __future__ import annotations

from sqlalchemy import Connection, text

_BACKLOG = text("""
SELECT (SELECT count(*) FROM job_events WHERE status = 'pending'),
       (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM job_events
        WHERE status = 'pending'),
       (SELECT count(*) FROM job_enqueues)
""")


def outbox_backlog(connection: Connection) -> dict[str, float]:
    """``notifications_pending`` (events not yet acknowledged), ``oldest_pending_s`` (how
    long the oldest has waited) and ``enqueues_pending`` (chains owed, not yet sent)."""
    pending, oldest, enqueues = connection.execute(_BACKLOG).one()
    return {"notifications_pending": int(pending), "oldest_pending_s": float(oldest),
            "enqueues_pending": int(enqueues)}
