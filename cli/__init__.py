"""The ``orchestrator`` command: composes the domain with its adapters (the one place
allowed to import all of ``api``, ``tasks``, ``db`` and ``downstream``)."""
