"""The job state machine: pure data plus one function.

``UPLOADED → PLANNING → PARSING → ENRICHING → COSTING → COMPLETED``; every non-terminal
state may go to ``FAILED``; ``COMPLETED`` and ``FAILED`` are terminal. The database holds
the same table in a trigger (``db/migrations``), so no writer can store another move.
"""

from __future__ import annotations

from enum import StrEnum

from orchestrator.errors import InvalidTransition


class State(StrEnum):
    UPLOADED = "UPLOADED"
    PLANNING = "PLANNING"
    PARSING = "PARSING"
    ENRICHING = "ENRICHING"
    COSTING = "COSTING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[State] = frozenset({State.COMPLETED, State.FAILED})

#: The happy path, in order.
PIPELINE: tuple[State, ...] = (
    State.UPLOADED,
    State.PLANNING,
    State.PARSING,
    State.ENRICHING,
    State.COSTING,
    State.COMPLETED,
)

#: Every allowed move: the next state on the happy path, or FAILED from any non-terminal.
TRANSITIONS: frozenset[tuple[State, State]] = frozenset(
    {(a, b) for a, b in zip(PIPELINE, PIPELINE[1:], strict=False)}
    | {(s, State.FAILED) for s in State if s not in TERMINAL}
)


def transition(current: State, target: State, *, job_id: str | None = None) -> State:
    """Return ``target`` if ``current → target`` is allowed, else raise InvalidTransition."""
    if (current, target) not in TRANSITIONS:
        raise InvalidTransition(current.value, target.value, job_id=job_id)
    return target


def next_state(current: State) -> State:
    """The next state on the happy path; InvalidTransition from a terminal state."""
    if current in TERMINAL:
        raise InvalidTransition(current.value, "<next>")
    return PIPELINE[PIPELINE.index(current) + 1]
