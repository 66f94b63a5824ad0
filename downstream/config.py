"""Settings of the reference downstream services, read once from the environment."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


def default_data_dir() -> str:
    """A stable directory under the system temp dir, shared by every worker process.

    Stable (not ``mkdtemp``) because PLANNING and PARSING may be served by different
    processes of the same host and must find the same stored plans.
    """
    return os.path.join(tempfile.gettempdir(), "tf-cost-downstream")


@dataclass(frozen=True)
class DownstreamConfig:
    """What the services need: the bearer token, where plans live, the body cap.

    ``token`` None means no authentication (local use and tests only).
    """

    token: str | None = None
    data_dir: str = field(default_factory=default_data_dir)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DownstreamConfig:
        """Build from ``DOWNSTREAM_TOKEN`` and ``DOWNSTREAM_DATA_DIR``.

        An empty variable counts as unset. A bad value raises ``ValueError`` whose
        message names the variable, so start-up can fail with one clear line.
        """
        env = os.environ if environ is None else environ
        return cls(
            token=_token_from(env.get("DOWNSTREAM_TOKEN", "")),
            data_dir=_data_dir_from(env.get("DOWNSTREAM_DATA_DIR", "")),
        )


def _token_from(raw: str) -> str | None:
    """Validate a bearer token: printable ASCII without spaces (it goes in a header)."""
    if raw == "":
        return None
    if not raw.isascii() or not raw.isprintable() or any(ch.isspace() for ch in raw):
        raise ValueError("DOWNSTREAM_TOKEN must be printable ASCII without spaces")
    return raw


def _data_dir_from(raw: str) -> str:
    """Validate the plan directory: absent (default), or a path that is not a file."""
    if raw.strip() == "":
        return default_data_dir()
    path = os.path.abspath(os.path.expanduser(raw))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"DOWNSTREAM_DATA_DIR={raw!r} exists and is not a directory")
    return path
