"""Benchmarks of the Job Orchestrator: ``python -m benchmarks`` (``make bench``;
``make bench QUICK=1`` for the short run).

They start the product as the tests do — a fresh PostgreSQL database, an empty Redis
database index, its own Celery queue and lock prefix, the worker ``orchestrator worker``
ships (threads ×100), the API under gunicorn, and the scripted downstream server of
``tests/support`` answering at once — and measure, in order:

1. ``latency``: end-to-end latency of single jobs started one after another (idle);
2. ``versus``: the orchestrator beside a bare Celery chain of four HTTP POSTs on the same
   broker, pool, concurrency and downstream: a burst through each (throughput, each
   job's own latency), the chain's idle latency, hence ``throughput_ratio``;
3. ``api_latency``: POST start and GET state under light concurrency;
4. ``overhead``: the orchestrator's own time per stage, from the database's records;
5. ``memory``: RSS (and PSS) of the worker's and the API's process trees;
6. (not under QUICK) the ``versus`` sweep over worker concurrency, with its plot
   (``docs/benchmarks-throughput.svg``);
7. (not under QUICK) ``capacity``: on workers of its own (the stack's is stopped), N jobs
   (200) whose PLANNING waits 4 s on the downstream beside N instant ones, on the default
   worker and on threads ×N: each wall, the wall the waits add, the stages in flight at
   the peak, the worker's memory idle and at the peak; and prefork ×2 on 10 such jobs;
8. (not under QUICK) ``data_scale``: 1 M jobs of history in a database of its own:
   ``/metrics``, a state lookup, the jobs list and an idle recovery pass at 10 k and 1 M
   (``python -m benchmarks.data_scale`` runs it alone).

Human-readable lines go to stdout as it runs; the last line is one JSON object of figures.
Nothing here asserts on speed: the run fails (non-zero exit) only when something is
broken, e.g. a job that does not complete.
"""
