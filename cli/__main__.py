"""``python -m cli`` is ``orchestrator``."""

from cli.main import main

main()
