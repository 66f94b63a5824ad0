"""``orchestrator up``: the whole stack in the foreground until it is told to stop:
Ctrl-C, SIGTERM (``kill``, systemd) and SIGHUP (its terminal closed) alike stop everything
it started (see ``cli/stack.py``; a SIGKILL too, through its guard)."""

from __future__ import annotations

import contextlib
import time
import uuid

import click

from cli.stack import local_stack


def run_up() -> None:
    """Start the local stack, print how to use it, and wait until told to stop."""
    with local_stack(log_dir=None) as stack:
        for note in stack.notes:
            click.echo(note)
        click.echo(f"API         {stack.api_url}   token: {stack.api_token or '(auth off)'}")
        click.echo(f"Downstream  {stack.downstream_url}")
        example = uuid.uuid4()
        click.echo("Start a job:")
        click.echo(f"  curl -X POST {stack.api_url}/internal/jobs/{example}/start \\\n"
                   f"       -H 'Authorization: Bearer {stack.api_token}' \\\n"
                   f"       -H 'Content-Type: application/json' "
                   f"-d '{{\"input\": {{\"sample\": \"web-stack\"}}}}'")
        click.echo(f"  curl -H 'Authorization: Bearer {stack.api_token}' "
                   f"{stack.api_url}/internal/jobs/{example}")
        click.echo("In another shell, for `orchestrator jobs …` and Flower:")
        click.echo(f"  export DATABASE_URL='{stack.env['DATABASE_URL']}' "
                   f"REDIS_URL='{stack.env['REDIS_URL']}'")
        click.echo("  .venv/bin/orchestrator jobs list;  .venv/bin/celery -A tasks flower")
        click.echo("Ctrl-C to stop.")
        try:
            while all(c.proc.poll() is None for c in stack.children):
                time.sleep(0.5)
        except KeyboardInterrupt:  # SIGINT, SIGTERM or SIGHUP (cli.stack)
            with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
                click.echo("stopping…")
