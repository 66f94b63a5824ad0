"""The stage table: which states do work, with which service, under which limits.

The defaults are the contract's; each number is overridable from the environment
(``PLANNING_TIMEOUT``, ``PLANNING_MAX_RETRIES``, …) through :mod:`orchestrator.settings`.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.states import State


@dataclass(frozen=True)
class StageDefinition:
    """What never changes about a stage: its state, its service and what it must return."""

    state: State
    service: str
    url_variable: str
    default_path: str
    default_timeout: float
    default_max_retries: int
    required_field: str | None

    @property
    def name(self) -> str:
        return self.state.value


@dataclass(frozen=True)
class StageSpec:
    """A stage as configured: its definition plus the limits read from the environment."""

    definition: StageDefinition
    url: str
    timeout: float
    max_retries: int

    @property
    def state(self) -> State:
        return self.definition.state

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1


STAGE_DEFINITIONS: tuple[StageDefinition, ...] = (
    StageDefinition(State.PLANNING, "terraform execution", "TERRAFORM_EXECUTION_URL",
                    "/planning", 300.0, 2, "plan_reference"),
    StageDefinition(State.PARSING, "plan interpreter", "PLAN_INTERPRETER_URL",
                    "/parsing", 120.0, 2, None),
    StageDefinition(State.ENRICHING, "pricing enricher", "PRICING_ENRICHER_URL",
                    "/enriching", 180.0, 1, None),
    StageDefinition(State.COSTING, "cost calculator", "COST_CALCULATOR_URL",
                    "/costing", 60.0, 2, "result_reference"),
)

STAGE_STATES: tuple[State, ...] = tuple(d.state for d in STAGE_DEFINITIONS)


def definition_for(state: State) -> StageDefinition:
    """The stage definition of a working state; KeyError for UPLOADED or a terminal one."""
    for definition in STAGE_DEFINITIONS:
        if definition.state is state:
            return definition
    raise KeyError(state)


def stages_from(state: State) -> tuple[State, ...]:
    """The working states from ``state`` (included) to the end: what a resumed job still runs."""
    if state not in STAGE_STATES:
        return ()
    return STAGE_STATES[STAGE_STATES.index(state):]
