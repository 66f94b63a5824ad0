"""``orchestrator demo``: the sample plans through every stage, watched live, summarised.

Four jobs: ``web-stack`` with a PARSING service that answers 503 once (a retry shows),
``resize-instance``, ``teardown``, and ``malformed`` (a broken plan: a clean FAILED at
PARSING). Exit status 0 when each ends as expected.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import click
import requests

from cli.embedded import data_dir
from cli.stack import Stack, headers, local_stack

TERMINAL = ("COMPLETED", "FAILED")


@dataclass
class DemoJob:
    name: str
    input: dict[str, Any]
    expected: str
    story: str
    job_id: uuid.UUID = field(default_factory=uuid.uuid4)
    seen_transitions: int = 0
    seen_failures: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


def demo_jobs() -> list[DemoJob]:
    return [
        DemoJob("web-stack", {"sample": "web-stack",
                              "faults": {"PARSING": {"fail_times": 1, "status": 503}}},
                "COMPLETED", "a new web stack; its plan interpreter fails once (503)"),
        DemoJob("resize-instance", {"sample": "resize-instance"}, "COMPLETED",
                "an instance resized, a volume moved to gp3"),
        DemoJob("teardown", {"sample": "teardown"}, "COMPLETED",
                "deletes and replacements"),
        DemoJob("malformed", {"sample": "malformed"}, "FAILED",
                "a broken plan: PARSING must refuse it"),
    ]


def run_demo() -> int:
    click.secho("Job Orchestrator demo", bold=True)
    click.echo("Starting PostgreSQL, Redis, the reference services, a worker and the API…")
    overrides = {"RETRY_BACKOFF_BASE": "1"} if "RETRY_BACKOFF_BASE" not in _env() else {}
    try:
        with local_stack(log_dir=data_dir() / "demo-logs", overrides=overrides) as stack:
            for note in stack.notes:
                click.echo(f"  {note}")
            click.echo(f"  API         {stack.api_url}")
            click.echo(f"  logs        {stack.log_dir}")
            jobs = demo_jobs()
            ok = _run(stack, jobs)
            _next_steps(stack, jobs)
    except KeyboardInterrupt:
        click.echo("\ninterrupted; everything started was stopped")
        return 130
    click.secho("demo finished: every job ended as expected" if ok
                else "demo finished: some job did not end as expected", fg="green" if ok
                else "red", bold=True)
    return 0 if ok else 1


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _run(stack: Stack, jobs: list[DemoJob]) -> bool:
    click.echo("")
    session = requests.Session()
    session.headers.update(headers(stack))
    for job in jobs:
        response = session.post(f"{stack.api_url}/internal/jobs/{job.job_id}/start",
                                json={"input": job.input}, timeout=10,
                                headers={"X-Correlation-ID": f"demo-{job.name}"})
        response.raise_for_status()
        click.echo(f"started  {job.name:<16} {job.story}")
    click.echo("")
    started = time.monotonic()
    deadline = started + 120
    while time.monotonic() < deadline:
        for job in jobs:
            job.detail = session.get(f"{stack.api_url}/internal/jobs/{job.job_id}",
                                     timeout=10).json()
            _print_progress(job, time.monotonic() - started)
        if all(j.detail.get("current_state") in TERMINAL for j in jobs):
            break
        time.sleep(0.1)
    click.echo("")
    for job in jobs:
        _summary(job)
    return all(j.detail.get("current_state") == j.expected for j in jobs)


def _print_progress(job: DemoJob, elapsed: float) -> None:
    for t in job.detail.get("transitions", [])[job.seen_transitions:]:
        colour = {"COMPLETED": "green", "FAILED": "red"}.get(t["to_state"])
        click.echo(f"[{elapsed:5.1f}s] {job.name:<16} {t['from_state']:>9} → "
                   + click.style(t["to_state"], fg=colour))
        job.seen_transitions += 1
    failures = [s for s in job.detail.get("stages", []) if s["status"] == "FAILED"]
    for attempt in failures[job.seen_failures:]:
        click.echo(f"[{elapsed:5.1f}s] {job.name:<16} "
                   + click.style(f"✗ {attempt['error_message']}", fg="yellow"))
        job.seen_failures += 1


def _summary(job: DemoJob) -> None:
    d = job.detail
    state = d.get("current_state", "?")
    mark = "✓" if state == job.expected else "✗"
    click.secho(f"{mark} {job.name}: {state} (expected {job.expected})   job {job.job_id}",
                bold=True, fg="green" if state == job.expected else "red")
    click.echo(f"  retries {d.get('retry_count')}"
               + (f"   error: {d['error_message']}" if d.get("error_message") else ""))
    previous = d.get("created_at")
    for t in d.get("transitions", []):
        click.echo(f"    {t['from_state']:>9} → {t['to_state']:<10} "
                   f"+{_seconds(previous, t['at']):6.3f}s")
        previous = t["at"]
    for s in d.get("stages", []):
        click.echo(f"    {s['stage_name']:<9} attempt {s['attempt_number']}  {s['status']:<7} "
                   f"{s['duration_ms'] or 0:>5} ms")
    if d.get("result"):
        _cost_table(d["result"])
    click.echo("")


def _seconds(start: str | None, end: str) -> float:
    from datetime import datetime

    if not start:
        return 0.0
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _money(value: Any) -> str:
    return f"{Decimal(str(value or 0)):,.2f}"


def _cost_table(result: dict[str, Any]) -> None:
    rows = result.get("resources", [])
    width = max([len(r["address"]) for r in rows] + [8])
    click.echo(f"    {'RESOURCE':<{width}}  {'ACTION':<8} {'BEFORE':>10} {'AFTER':>10} "
               f"{'DELTA':>10}")
    for r in rows:
        before, after = Decimal(str(r["monthly_cost_before"] or 0)), Decimal(
            str(r["monthly_cost_after"] or 0))
        priced = "" if r.get("priced", True) else "  (unpriced)"
        click.echo(f"    {r['address']:<{width}}  {r['action']:<8} {_money(before):>10} "
                   f"{_money(after):>10} {after - before:>+10,.2f}{priced}")
    click.secho(f"    {'TOTAL ' + result.get('currency', 'USD') + '/month':<{width}}  "
                f"{'':<8} {_money(result['monthly_cost_before']):>10} "
                f"{_money(result['monthly_cost_after']):>10} "
                f"{Decimal(str(result['monthly_cost_delta'])):>+10,.2f}", bold=True)
    unpriced = [r["address"] for r in rows if not r.get("priced", True)]
    if unpriced:
        click.echo(f"    not in the total: {len(unpriced)} unpriced resource(s), "
                   f"{', '.join(unpriced)}")


def _next_steps(stack: Stack, jobs: list[DemoJob]) -> None:
    click.echo("Where to look next:")
    click.echo(f"  the JSON logs of this run (one event a line): {stack.log_dir}")
    click.echo("  .venv/bin/orchestrator up   keeps this stack running and prints how to reach it;")
    click.echo(f"  then: .venv/bin/orchestrator jobs show {jobs[0].job_id}")
    click.echo("        .venv/bin/celery -A tasks flower   (live tasks and workers)")
