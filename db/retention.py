"""Retention (``orchestrator jobs prune``): delete terminal jobs completed before a cutoff,
with their attempts, transitions and events (ON DELETE CASCADE), in small batches.

Safe while jobs run:
- each batch is its own short transaction; it locks only the rows it deletes, and skips
  rows another transaction holds (``FOR UPDATE SKIP LOCKED``), so no table lock and no
  wait behind a worker;
- only COMPLETED or FAILED jobs, which never change again;
- never a job whose terminal event is still owed to ``NOTIFY_URL`` (pending), so no
  notification is lost;
- never a job with a redrive still running (deleting it would clear the running job's
  ``redriven_from`` mid-flight); a finished redrive just forgets where it came from.
The per-state counts (``job_state_counts``) follow through their DELETE trigger. A batch
that meets a deadlock (the counts' shard rows) is retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

_KEEP = """
    j.current_state IN ('COMPLETED', 'FAILED') AND j.completed_at < :cutoff
    AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.redriven_from = j.job_id
                    AND r.current_state NOT IN ('COMPLETED', 'FAILED'))
    AND NOT EXISTS (SELECT 1 FROM job_events e WHERE e.job_id = j.job_id
                    AND e.status = 'pending')
"""

_BATCH = text(f"""
WITH doomed AS (
    SELECT j.job_id FROM jobs j WHERE {_KEEP}
    ORDER BY j.completed_at LIMIT :batch
    FOR UPDATE OF j SKIP LOCKED
)
DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM doomed)
""")

_HELD = text("""
SELECT count(*) FROM jobs j
WHERE j.current_state IN ('COMPLETED', 'FAILED') AND j.completed_at < :cutoff
""")

DEADLOCK = "40P01"
RETRIES = 5


@dataclass(frozen=True)
class Pruned:
    deleted: int
    cutoff: datetime
    kept: int  # terminal jobs before the cutoff left for now (notification owed, redrive
    #            running, or locked by another transaction)


def prune(engine: Engine, older_than: float, *, batch: int = 500,
          progress: Callable[[int], None] | None = None) -> Pruned:
    """Delete terminal jobs completed more than ``older_than`` seconds ago."""
    with engine.connect() as c:
        cutoff = c.execute(text("SELECT now() - make_interval(secs => :s)"),
                           {"s": older_than}).scalar_one()
    deleted = 0
    while True:
        count = _one_batch(engine, cutoff, batch)
        deleted += count
        if progress is not None and count:
            progress(deleted)
        if count < batch:
            break
    with engine.connect() as c:
        kept = c.execute(_HELD, {"cutoff": cutoff}).scalar_one()
    return Pruned(deleted, cutoff, kept)


def _one_batch(engine: Engine, cutoff: datetime, batch: int) -> int:
    for attempt in range(1, RETRIES + 1):
        try:
            with engine.begin() as c:
                return c.execute(_BATCH, {"cutoff": cutoff, "batch": batch}).rowcount
        except OperationalError as exc:
            if getattr(exc.orig, "pgcode", None) != DEADLOCK or attempt == RETRIES:
                raise
            time.sleep(0.05 * attempt)  # a deadlock victim: let the other side commit
    raise AssertionError("unreachable")  # pragma: no cover
