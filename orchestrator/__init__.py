"""The domain core of the Job Orchestrator.

Dependency rule: this package imports nothing from ``api``, ``tasks``, ``db``, ``cli`` or
``downstream``, and nothing of SQLAlchemy, Redis or Celery. It holds the states, the stage
table, the errors, the settings and the use cases (start, run a stage, fail, recover),
written against the small interfaces in :mod:`orchestrator.ports`. The adapters depend on
it, never the reverse; ``tests/unit/test_dependency_rule.py`` keeps this true.
"""
