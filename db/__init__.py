"""PostgreSQL persistence: the schema, its Alembic migrations, the repository and the
unit of work. Depends on the domain (``orchestrator``); nothing in the domain imports it.
"""
