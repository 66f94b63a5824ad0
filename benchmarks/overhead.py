"""The orchestrator's own overhead per stage, from what it recorded in PostgreSQL.

For each job of the sequential latency benchmark (an idle worker, an instant downstream):

    wall     = at(COSTING → COMPLETED) − at(UPLOADED → PLANNING)      (job_transitions)
    attempts = Σ duration_ms of its four SUCCESS attempts             (stage_executions)
    overhead = (wall − attempts) / 4

An attempt's ``duration_ms`` runs from opening the attempt row to the write of its result,
so it holds the downstream call (here a local HTTP round trip of about a millisecond) and
little else; the overhead is what lies between attempts: committing, publishing the next
task, Celery delivering it to a pool process, the state check, the Redis lock and the claim.
Both ends are PostgreSQL timestamps, so no clocks are mixed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from benchmarks.stack import BenchmarkError, Stack
from benchmarks.stats import mean, percentile, r

STAGES = 4

QUERY = """
SELECT t.job_id,
       extract(epoch FROM max(t.at) - min(t.at)) * 1000 AS wall_ms,
       (SELECT sum(s.duration_ms) FROM stage_executions s
         WHERE s.job_id = t.job_id AND s.status = 'SUCCESS') AS attempts_ms,
       (SELECT count(*) FROM stage_executions s WHERE s.job_id = t.job_id) AS attempts,
       count(*) AS transitions
  FROM job_transitions t
 WHERE t.job_id = ANY(%s::uuid[])
 GROUP BY t.job_id
"""


def records(stack: Stack, job_ids: Sequence[uuid.UUID]) -> list[tuple[float, float]]:
    """(wall ms, Σ attempt ms) per job; fails on a job that is not a clean 4-stage run."""
    with stack.db.conn.cursor() as cur:
        cur.execute(QUERY, ([str(j) for j in job_ids],))
        rows = cur.fetchall()
    if len(rows) != len(job_ids):
        raise BenchmarkError(f"transitions found for {len(rows)} of {len(job_ids)} jobs")
    for job_id, _, _, attempts, transitions in rows:
        if attempts != STAGES or transitions != STAGES + 1:
            raise BenchmarkError(f"job {job_id}: {attempts} attempts, {transitions} "
                                 "transitions (expected 4 and 5)")
    return [(float(wall), float(spent)) for _, wall, spent, _, _ in rows]


def run(stack: Stack, job_ids: Sequence[uuid.UUID]) -> dict[str, float]:
    rows = records(stack, job_ids)
    overheads = [(wall - spent) / STAGES for wall, spent in rows]
    attempt_ms = mean([spent for _, spent in rows]) / STAGES
    wall_ms = mean([wall for wall, _ in rows])
    print(f"[overhead] {len(rows)} jobs: wall {wall_ms:.1f} ms on average, of which "
          f"{attempt_ms * STAGES:.1f} ms inside attempts ({attempt_ms:.1f} ms per attempt); "
          f"overhead per stage: mean {mean(overheads):.1f} ms, p50 "
          f"{percentile(overheads, 50):.1f} ms, p95 {percentile(overheads, 95):.1f} ms",
          flush=True)
    return {"stage_overhead_ms": r(mean(overheads)),
            "stage_overhead_p95_ms": r(percentile(overheads, 95)),
            "stage_attempt_ms": r(attempt_ms),
            "job_wall_db_ms": r(wall_ms)}
