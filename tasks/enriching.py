"""ENRICHING: have the pricing enricher attach unit prices.

The flow of every stage task is in :mod:`tasks.stage`."""

from __future__ import annotations

from typing import Any

from celery import Task

from orchestrator.states import State
from tasks.stage import run_stage_task

STATE = State.ENRICHING


def run(self: Task, job_id: str, correlation_id: str | None = None) -> dict[str, Any]:
    return run_stage_task(self, STATE, job_id, correlation_id)
