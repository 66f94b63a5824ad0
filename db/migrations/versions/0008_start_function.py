"""A job's start as one statement: a PL/pgSQL function, like the stage's two (0007).

``POST /internal/jobs/{id}/start`` created the job if new, moved it UPLOADED → PLANNING by
compare-and-set and wrote its outbox row, in one transaction of five round trips (BEGIN,
the insert, the move built by SQLAlchemy, the outbox row, COMMIT): about half of the
request's wall time with an idle worker, on the critical path of every job's latency.
Here the same statements run inside ``orchestrator_start_job``, sent alone in autocommit:
one round trip, one transaction, each statement planned once per session.

Semantics are the transaction's own, unchanged:

* the insert is ``ON CONFLICT DO NOTHING``: a concurrent start of the same id waits for the
  first one's commit, then inserts nothing;
* a repeated start with an input (``p_check_input``) other than the stored one writes
  nothing and says so (``mismatch``);
* the move is a compare-and-set on UPLOADED, so of concurrent starts exactly one moves the
  job (each statement of a function in READ COMMITTED sees what committed before it ran);
  only that one writes the outbox row owing the job its chain (``orchestrator.outbox``);
* the row returned is the job as it is after the call: just moved, or as it stood.

Returns one row: ``created``, ``moved``, ``mismatch`` and the job (the ``jobs`` row type;
all its columns NULL if the job vanished between the insert and the read, which only a
delete racing the start can do).

The previous version runs its statements as before and keeps working on this schema; the
function only adds.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

FUNCTION = """
CREATE OR REPLACE FUNCTION orchestrator_start_job(
    p_job_id uuid, p_input jsonb, p_check_input boolean, p_correlation_id text,
    p_redriven_from uuid, p_reason text, p_outbox_delay double precision)
RETURNS TABLE (created boolean, moved boolean, mismatch boolean, job jobs)
LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_created boolean;
    v_moved boolean;
BEGIN
    INSERT INTO jobs (job_id, current_state, input, correlation_id, redriven_from,
                      retry_count, fence, resume_count, created_at, updated_at,
                      last_progress_at)
    VALUES (p_job_id, 'UPLOADED', p_input, p_correlation_id, p_redriven_from, 0, 0, 0,
            now(), now(), now())
    ON CONFLICT (job_id) DO NOTHING;
    v_created := FOUND;
    IF NOT v_created AND p_check_input THEN
        SELECT * INTO v_job FROM jobs WHERE jobs.job_id = p_job_id;
        IF FOUND AND v_job.input IS DISTINCT FROM p_input THEN
            RETURN QUERY SELECT false, false, true, v_job;
            RETURN;
        END IF;
    END IF;
    UPDATE jobs
    SET current_state = 'PLANNING', previous_state = 'UPLOADED', state_reason = p_reason,
        updated_at = now(), last_progress_at = now(), next_attempt_at = NULL,
        started_at = coalesce(started_at, now())
    WHERE jobs.job_id = p_job_id AND current_state = 'UPLOADED'
    RETURNING * INTO v_job;
    v_moved := FOUND;
    IF v_moved THEN
        INSERT INTO job_enqueues (job_id, from_state, correlation_id, fence, created_at,
                                  attempts, next_attempt_at)
        VALUES (p_job_id, 'PLANNING', v_job.correlation_id, v_job.fence, now(), 0,
                now() + make_interval(secs => p_outbox_delay))
        ON CONFLICT (job_id) DO NOTHING;
    ELSE
        SELECT * INTO v_job FROM jobs WHERE jobs.job_id = p_job_id;
    END IF;
    RETURN QUERY SELECT v_created, v_moved, false, v_job;
END $$;
"""


def upgrade() -> None:
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS orchestrator_start_job(uuid, jsonb, boolean, text, "
               "uuid, text, double precision)")
