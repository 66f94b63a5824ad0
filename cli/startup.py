"""What every command does before its work: read ``.env``, and turn a start-up failure
into one line on stderr and an exit code instead of a traceback.

Exit codes: 2 for a bad or missing setting (names the variable); 69 (``EX_UNAVAILABLE``
of sysexits.h, the code Celery's own commands exit with when the broker cannot be reached)
when a service the command needs cannot be reached within ``STARTUP_TIMEOUT``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from orchestrator.errors import ConfigError

EXIT_CONFIG = 2
EXIT_UNREACHABLE = 69


class Unavailable(Exception):
    """A service the command needs did not answer at start-up; the message is the one line
    to print (it names the variable and redacts its password)."""


def load_env_file(directory: Path | None = None) -> Path | None:
    """Read ``.env`` of ``directory`` (the working directory) into ``os.environ`` when there
    is one; a variable already in the environment wins over the file. A line the file's
    syntax cannot read is a ConfigError naming it, not a warning: a setting that silently
    does not apply is worse than none.

    ``ORCHESTRATOR_ENV_FILE`` in the environment names another file instead (which must
    exist), or, empty, none at all (the test suite's subprocesses: a developer's own
    ``.env`` must not leak into them)."""
    from dotenv import load_dotenv
    from dotenv.parser import parse_stream

    chosen = os.environ.get("ORCHESTRATOR_ENV_FILE")
    if chosen == "":
        return None
    if chosen is not None:
        path = Path(chosen)
        if not path.is_file():
            raise ConfigError("ORCHESTRATOR_ENV_FILE", f"{chosen!r} is not a file")
    else:
        path = (directory or Path.cwd()) / ".env"
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as stream:
        for binding in parse_stream(stream):
            if binding.error:
                raise ConfigError(str(path), f"line {binding.original.line}: cannot read "
                                             f"{binding.original.string.strip()!r}")
    load_dotenv(path, override=False, encoding="utf-8")
    return path


@contextlib.contextmanager
def one_line_errors(program: str = "orchestrator") -> Iterator[None]:
    """A bad setting exits 2, an unreachable service 69, each with one line on stderr."""
    try:
        yield
    except ConfigError as exc:
        _fail(f"{program}: configuration error: {exc}", EXIT_CONFIG)
    except Unavailable as exc:
        _fail(f"{program}: {exc}", EXIT_UNREACHABLE)


def _fail(line: str, code: int) -> None:
    print(line, file=sys.stderr, flush=True)
    # SystemExit, not click's Exit: Celery loads `-A tasks` inside a `except Exception`
    # that would print a traceback of anything else.
    raise SystemExit(code)
