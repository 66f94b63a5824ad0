"""The thin internal HTTP API: parse, call a use case, serialise.

Knows Celery only through one enqueue function (``tasks.chain.make_enqueuer``) and reads
job state from PostgreSQL only, never from a Celery result backend. Domain errors become
HTTP statuses in one place (:mod:`api.errors`).
"""
