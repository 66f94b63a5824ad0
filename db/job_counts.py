"""The number of jobs in each state, read in O(1) from ``job_state_counts``.

Triggers on ``jobs`` keep that table exact in every writer's own transaction (migration
0003, which says why the counts are spread over shards): a state's count is the sum of
its shards, at most 64 rows whatever the number of jobs, so a ``/metrics`` scrape no
longer counts the jobs table.
"""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from db.schema import job_state_counts


def jobs_by_state(connection: Connection) -> dict[str, int]:
    """``{state: number of jobs}`` as of the connection's snapshot; a state without jobs
    may be missing or 0."""
    c = job_state_counts.c
    rows = connection.execute(select(c.state, func.sum(c.count)).group_by(c.state))
    return {state: int(count) for state, count in rows}
