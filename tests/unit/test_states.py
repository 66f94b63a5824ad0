"""The state machine allows exactly the contract's moves: happy path, non-terminal → FAILED."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.errors import InvalidTransition, OrchestratorError
from orchestrator.states import PIPELINE, TERMINAL, TRANSITIONS, State, next_state, transition

HAPPY_PATH = [
    ("UPLOADED", "PLANNING"),
    ("PLANNING", "PARSING"),
    ("PARSING", "ENRICHING"),
    ("ENRICHING", "COSTING"),
    ("COSTING", "COMPLETED"),
]
NON_TERMINAL = ["UPLOADED", "PLANNING", "PARSING", "ENRICHING", "COSTING"]
ALLOWED = {(State(a), State(b)) for a, b in HAPPY_PATH} | {
    (State(s), State.FAILED) for s in NON_TERMINAL
}
ALL_PAIRS = list(itertools.product(list(State), repeat=2))


def test_exactly_seven_states() -> None:
    assert [s.value for s in State] == [
        "UPLOADED", "PLANNING", "PARSING", "ENRICHING", "COSTING", "COMPLETED", "FAILED",
    ]


@pytest.mark.parametrize("state", list(State))
def test_state_value_equals_name(state: State) -> None:
    assert state.value == state.name
    assert state == state.name


def test_all_pairs_is_seven_by_seven() -> None:
    assert len(ALL_PAIRS) == 49


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS, ids=lambda s: s.value)
def test_transition_allowed_exactly_per_contract(current: State, target: State) -> None:
    if (current, target) in ALLOWED:
        assert transition(current, target) is target
    else:
        with pytest.raises(InvalidTransition) as info:
            transition(current, target)
        assert info.value.from_state == current.value
        assert info.value.to_state == target.value
        assert current.value in str(info.value) and target.value in str(info.value)


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


def test_transitions_set_has_exactly_ten_pairs() -> None:
    assert len(TRANSITIONS) == 10
    assert TRANSITIONS == ALLOWED


def test_terminal_set_and_is_terminal() -> None:
    assert {State.COMPLETED, State.FAILED} == TERMINAL
    assert [s for s in State if s.is_terminal] == [State.COMPLETED, State.FAILED]


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
        steps.append(state)
    assert steps == [State.PLANNING, State.PARSING, State.ENRICHING, State.COSTING,
                     State.COMPLETED]
