"""Celery adapter: the app, one task per stage, the chain, the lock, the HTTP client.

``celery -A tasks worker`` (and ``celery -A tasks flower``) find the app as ``tasks.app``:
it is built from the environment on first access, not at import, so importing this
package never connects to anything.
"""

from __future__ import annotations

import os
from typing import Any

_apps: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        if "app" not in _apps:
            from orchestrator.settings import Settings
            from tasks.factory import create_celery_app

            _apps["app"] = create_celery_app(Settings.from_env(os.environ))
        return _apps["app"]
    raise AttributeError(name)
