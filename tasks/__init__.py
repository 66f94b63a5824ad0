"""Celery adapter: the app, one task per stage, the chain, the lock, the HTTP client.

``celery -A tasks worker`` (and ``celery -A tasks flower``) find the app as ``tasks.app``:
it is built from the environment on first access, not at import, so importing this
package never connects to anything. Under the ``celery`` command that first access is the
command's start-up, so it does what ``orchestrator``'s commands do (cli.startup,
cli.preflight): read ``.env``, turn a bad setting into one line and exit 2, and wait up to
``STARTUP_TIMEOUT`` for the services the subcommand needs (exit 69 if one does not answer).
"""

from __future__ import annotations

import os
import sys
from typing import Any

_apps: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        if "app" not in _apps:
            _apps["app"] = _app_for_command_line() if _celery_command() else _build_app()
        return _apps["app"]
    raise AttributeError(name)


def _build_app() -> Any:
    from orchestrator.settings import Settings
    from tasks.factory import create_celery_app

    return create_celery_app(Settings.from_env(os.environ))


def _app_for_command_line() -> Any:
    from cli.preflight import BROKER, POSTGRES, REDIS, wait_for_services
    from cli.startup import load_env_file, one_line_errors
    from orchestrator.settings import Settings
    from tasks.factory import create_celery_app

    needs = {"worker": [POSTGRES, REDIS, BROKER], "flower": [BROKER]}
    with one_line_errors():
        load_env_file()
        settings = Settings.from_env(os.environ)
        app = create_celery_app(settings)
        command = _celery_command()
        # `celery -A tasks worker --help` loads the app too, and needs no service.
        if command in needs and "--help" not in sys.argv:
            wait_for_services(settings, needs[command])
    return app


def _celery_command() -> str | None:
    """The subcommand of the running ``celery`` command line (worker, flower, …) while it
    loads ``-A tasks``; None anywhere else (tests, other programs)."""
    import click

    context = click.get_current_context(silent=True)
    if context is None or context.command.name != "celery":
        return None
    return context.invoked_subcommand
