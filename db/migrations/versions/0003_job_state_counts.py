"""Jobs by state in O(1): ``job_state_counts``, kept exact by triggers on ``jobs``.

``GET /metrics`` used to count the whole ``jobs`` table on every scrape (``SELECT
current_state, count(*) … GROUP BY``): 212 ms p99 at 1.1 M jobs, growing with the history.
Now the scrape sums ``job_state_counts`` (at most 7 × ``SHARDS`` rows, whatever the size of
``jobs``; ``benchmarks/data_scale.py``: ≈ 1.1 ms p50, < 2 ms p99 through the Flask app at
10 k and at 1 M jobs, against 114–120 ms p50 for the old count at 1 M), and triggers on
``jobs`` keep it exact in the writer's own transaction, so the counts a scrape sees
always match the rows its snapshot sees. One trigger per statement for each of INSERT,
UPDATE and DELETE, each reading the statement's rows from its transition table(s) and
adding one signed count per state it changed (an UPDATE adds its new rows' states and
subtracts its old rows'; an UPDATE that moved no job, e.g. a claim or a heartbeat,
writes nothing); TRUNCATE sets every count to zero.

Measured on the 2-core development machine, PostgreSQL 15, while other work ran
(``pgbench``, each client its own connection running the stage's transaction: move a job
PLANNING → PARSING by compare-and-set, close its attempt, commit; three 8 s rounds):

===================================  ========================  ========================
design                               32 clients, tx/s          64 clients, tx/s
===================================  ========================  ========================
no counting                          2015–2448                 1852–2358
one row per state (per row)          659–761                   256–520
64 shards by backend (per row)       1651–2729                 1711–1921
64 shards by backend (per statement) 1755–2426                 1634–1954
===================================  ========================  ========================

Why shards: a row stays locked until its transaction commits (fsync included), so with
one row per state every transition queues behind the one before it: 3–7× fewer
transitions per second in a burst, and its tail latency 3–4× longer (a first
measurement with Python clients: p99 590–650 ms against 130–290 ms). Spreading each state
over 64 rows, chosen by ``pg_backend_pid() % SHARDS``, puts the counts within the noise of
not counting at all: a connection runs one transaction at a time, so two transactions meet
on a row only when their backends share a shard. Append-only delta rows (one insert per
change, summed by the scrape) measured as well as shards in a burst, but need compacting
and vacuuming to keep the scrape O(1) (and this machine's server runs with autovacuum
off); the shard rows are updated in place (HOT; ``fillfactor`` 50 leaves the room), ≤ 7 ×
64 of them, and need neither.

Why per statement, not per row: a row trigger updates the same counter row once per job
the statement moves, and PostgreSQL keeps every version of that row until the
transaction ends, so each update walks the ones before it: one ``UPDATE`` moving 100,000
jobs took 166 s with the row trigger (10,000: 1.9–3.3 s), 4–7 s per statement (no
counting: 3–4 s). The price is that every UPDATE of ``jobs`` runs the trigger, moved or
not: ≈ 15–30 µs more per statement that moves nothing (``pgbench`` on one connection,
asynchronous commit: a heartbeat 131 → 159 µs, a missed compare-and-set 30 → 48 µs), the
same as the row trigger for a move (161 → 190 µs).

A statement's counts are written in the state machine's order, so statements cannot
deadlock on them; transactions of several statements (a prune deleting in batches, say)
can only if their backends share a shard, and should commit per batch anyway.

The backfill counts the existing rows into shard 0 after the triggers exist, in the
migration's transaction, under a lock that keeps writers out until it commits
(``SHARE ROW EXCLUSIVE``, which CREATE TRIGGER takes anyway): no write can fall between
the count and the triggers. Writes to ``jobs`` wait for that one count (the whole
migration: 0.2 s at 1 M jobs).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STATES = ("UPLOADED", "PLANNING", "PARSING", "ENRICHING", "COSTING", "COMPLETED", "FAILED")
#: Rows per state; a transaction uses shard ``pg_backend_pid() % SHARDS``.
SHARDS = 64
_ORDER = "ARRAY[" + ", ".join(f"'{s}'" for s in STATES) + "]"

TRIGGERS = f"""
CREATE FUNCTION jobs_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- What the statement's rows were minus what they are, by state: nothing for an
    -- update that moved no job (a claim, a heartbeat, a compare-and-set that missed).
    INSERT INTO job_state_counts AS c (state, shard, count)
        SELECT state, pg_backend_pid() % {SHARDS}, sum(delta) FROM (
            SELECT current_state AS state, 1 AS delta FROM updated_jobs
            UNION ALL
            SELECT current_state, -1 FROM jobs_before_update) AS moves
        GROUP BY state HAVING sum(delta) <> 0
        ORDER BY array_position({_ORDER}, state)
        ON CONFLICT (state, shard) DO UPDATE SET count = c.count + excluded.count;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_count_updated AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS jobs_before_update NEW TABLE AS updated_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_updated();

CREATE FUNCTION jobs_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_state_counts AS c (state, shard, count)
        SELECT current_state, pg_backend_pid() % {SHARDS}, count(*) FROM inserted_jobs
        GROUP BY current_state ORDER BY array_position({_ORDER}, current_state)
        ON CONFLICT (state, shard) DO UPDATE SET count = c.count + excluded.count;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_count_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_inserted();

CREATE FUNCTION jobs_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_state_counts AS c (state, shard, count)
        SELECT current_state, pg_backend_pid() % {SHARDS}, -count(*) FROM deleted_jobs
        GROUP BY current_state ORDER BY array_position({_ORDER}, current_state)
        ON CONFLICT (state, shard) DO UPDATE SET count = c.count + excluded.count;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_count_deleted AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS deleted_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_deleted();

CREATE FUNCTION jobs_count_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_state_counts;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_count_truncated AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_truncated();
"""


def upgrade() -> None:
    op.create_table(
        "job_state_counts",
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("shard", sa.SmallInteger, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("state", "shard", name="job_state_counts_pkey"),
        postgresql_with={"fillfactor": 50},
    )
    # Writers wait from here to the commit: nothing is written between the count below
    # and the triggers that count from now on.
    op.execute("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
    op.execute(TRIGGERS)
    op.execute("INSERT INTO job_state_counts (state, shard, count)"
               " SELECT current_state, 0, count(*) FROM jobs GROUP BY current_state")


def downgrade() -> None:
    for trigger in ("jobs_count_updated", "jobs_count_inserted", "jobs_count_deleted",
                    "jobs_count_truncated"):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON jobs")
        op.execute(f"DROP FUNCTION IF EXISTS {trigger}()")
    op.drop_table("job_state_counts")
