"""The state machine allows exactly the contract's moves: happy path, non-terminal → FAILED.

The expectation is written out below as the contract's table, cell by cell, and the
product's table and function are checked against it (never against a set computed the
same way the product computes its own)."""

from __future__ import annotations

import pytest

from orchestrator.errors import InvalidTransition, OrchestratorError
from orchestrator.states import PIPELINE, TERMINAL, TRANSITIONS, State, next_state, transition

# Every pair of states: "x" is an allowed move (row → column), "." a refused one.
CONTRACT = """
             UPLOADED  PLANNING  PARSING  ENRICHING  COSTING  COMPLETED  FAILED
UPLOADED        .         x         .         .         .         .        x
PLANNING        .         .         x         .         .         .        x
PARSING         .         .         .         x         .         .        x
ENRICHING       .         .         .         .         x         .        x
COSTING         .         .         .         .         .         x        x
COMPLETED       .         .         .         .         .         .        .
FAILED          .         .         .         .         .         .        .
"""


def _cells(table: str) -> dict[tuple[str, str], bool]:
    header, *rows = [line.split() for line in table.strip().splitlines()]
    cells = {}
    for row in rows:
        source, marks = row[0], row[1:]
        assert len(marks) == len(header), row
        for target, mark in zip(header, marks, strict=True):
            assert mark in ("x", "."), row
            cells[(source, target)] = mark == "x"
    return cells


EXPECTED = _cells(CONTRACT)
STATE_NAMES = ["UPLOADED", "PLANNING", "PARSING", "ENRICHING", "COSTING", "COMPLETED", "FAILED"]
HAPPY_PATH = [
    ("UPLOADED", "PLANNING"),
    ("PLANNING", "PARSING"),
    ("PARSING", "ENRICHING"),
    ("ENRICHING", "COSTING"),
    ("COSTING", "COMPLETED"),
]


def test_exactly_seven_states() -> None:
    assert [s.value for s in State] == STATE_NAMES


def test_the_table_covers_every_pair_of_the_products_states() -> None:
    # a state added to the product and missing from the table fails here
    assert sorted(EXPECTED) == sorted((a.value, b.value) for a in State for b in State)
    assert sum(EXPECTED.values()) == 10


@pytest.mark.parametrize("state", list(State))
def test_state_value_equals_name(state: State) -> None:
    assert state.value == state.name
    assert state == state.name


@pytest.mark.parametrize(("current", "target"), sorted(EXPECTED))
def test_transition_allowed_exactly_per_contract(current: str, target: str) -> None:
    if EXPECTED[(current, target)]:
        assert transition(State(current), State(target)) is State(target)
    else:
        with pytest.raises(InvalidTransition) as info:
            transition(State(current), State(target))
        assert info.value.from_state == current
        assert info.value.to_state == target
        assert current in str(info.value) and target in str(info.value)


def test_the_products_table_is_the_contracts() -> None:
    allowed = {(a.value, b.value) for a, b in TRANSITIONS}
    assert allowed == {pair for pair, ok in EXPECTED.items() if ok}


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_self_transition_rejected(state: State) -> None:
    with pytest.raises(InvalidTransition):
        transition(state, state)


@pytest.mark.parametrize("terminal", [State.COMPLETED, State.FAILED], ids=lambda s: s.value)
@pytest.mark.parametrize("target", list(State), ids=lambda s: s.value)
def test_terminal_states_have_no_way_out(terminal: State, target: State) -> None:
    with pytest.raises(InvalidTransition):
        transition(terminal, target)


def test_invalid_transition_carries_job_id_and_is_an_orchestrator_error() -> None:
    with pytest.raises(InvalidTransition) as info:
        transition(State.COMPLETED, State.PLANNING, job_id="job-1")
    assert info.value.job_id == "job-1"
    assert isinstance(info.value, OrchestratorError)


def test_terminal_set_and_is_terminal() -> None:
    assert {s.value for s in TERMINAL} == {"COMPLETED", "FAILED"}
    assert [s.value for s in State if s.is_terminal] == ["COMPLETED", "FAILED"]


def test_pipeline_order() -> None:
    assert [s.value for s in PIPELINE] == [
        "UPLOADED", "PLANNING", "PARSING", "ENRICHING", "COSTING", "COMPLETED",
    ]


@pytest.mark.parametrize(("current", "expected"), HAPPY_PATH)
def test_next_state_along_the_pipeline(current: str, expected: str) -> None:
    assert next_state(State(current)) is State(expected)


@pytest.mark.parametrize("terminal", [State.COMPLETED, State.FAILED], ids=lambda s: s.value)
def test_next_state_from_terminal_raises(terminal: State) -> None:
    with pytest.raises(InvalidTransition) as info:
        next_state(terminal)
    assert info.value.from_state == terminal.value


def test_walking_next_state_from_uploaded_reaches_completed_in_five_steps() -> None:
    state, steps = State.UPLOADED, []
    while not state.is_terminal:
        state = transition(state, next_state(state))
        steps.append(state.value)
    assert steps == ["PLANNING", "PARSING", "ENRICHING", "COSTING", "COMPLETED"]
