"""PARSING: have the plan interpreter list the resource changes.

The flow of every stage task is in :mod:`tasks.stage`."""

from __future__ import annotations

from typing import Any

from celery import Task

from orchestrator.states import State
from tasks.stage import run_stage_task

STATE = State.PARSING


def run(self: Task, job_id: str, correlation_id: str | None = None) -> dict[str, Any]:
    return run_stage_task(self, STATE, job_id, correlation_id)
