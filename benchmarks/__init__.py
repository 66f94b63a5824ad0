"""Benchmarks of the Job Orchestrator: ``python -m benchmarks`` (``make bench``).

They start the product as the tests do — a fresh PostgreSQL database, an empty Redis
database index, its own Celery queue and lock prefix, one prefork worker, the API under
gunicorn, and the scripted downstream server of ``tests/support`` answering at once — and
measure, in order:

1. ``latency``: end-to-end latency of single jobs started one after another;
2. ``throughput``: a burst of jobs started at once, until every one is COMPLETED;
3. ``api_latency``: POST start and GET state under light concurrency;
4. ``overhead``: the orchestrator's own time per stage, from the database's records;
5. ``memory``: RSS (and PSS) of the worker's and the API's process trees.

Human-readable lines go to stdout as it runs; the last line is one JSON object of figures.
Nothing here asserts on speed: the run fails (non-zero exit) only when something is
broken, e.g. a job that does not complete.
"""
