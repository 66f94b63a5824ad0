"""The one exception tree of the orchestrator::

    OrchestratorError
    ├── ConfigError                 a setting is missing or malformed (names the variable)
    ├── InvalidTransition           a move the state machine does not allow
    ├── JobNotFound                 no job with that id
    ├── JobTerminal                 the job is COMPLETED or FAILED; nothing more can happen
    └── StageError                  a stage attempt failed
        ├── TransientStageError     worth retrying: connection, timeout, 408, 429, 5xx
        │   └── StageTimeout        the attempt used up its stage's timeout
        ├── PermanentStageError     retrying cannot help: other 4xx, bad body, missing field
        └── StageCancelled          the job was failed while the attempt ran: write nothing

Errors carry data (``job_id``, ``stage``, …) rather than only prose, and causes are
chained with ``raise … from``. A busy lock or a compare-and-set that matches no row is not
an error here: the stage runner reports it as a ``Skipped`` outcome (someone else owns the
job now) and the task ends quietly.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base of every error the orchestrator raises on purpose."""

    def __init__(self, message: str, *, job_id: str | None = None, stage: str | None = None):
        super().__init__(message)
        self.message = message
        self.job_id = job_id
        self.stage = stage


class ConfigError(OrchestratorError):
    """A setting from the environment is missing or malformed."""

    def __init__(self, variable: str, problem: str):
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class InvalidTransition(OrchestratorError):
    def __init__(self, from_state: str, to_state: str, *, job_id: str | None = None):
        super().__init__(f"invalid transition {from_state} -> {to_state}", job_id=job_id)
        self.from_state = from_state
        self.to_state = to_state


class JobNotFound(OrchestratorError):
    def __init__(self, job_id: str):
        super().__init__(f"job {job_id} not found", job_id=job_id)


class JobTerminal(OrchestratorError):
    def __init__(self, job_id: str, state: str):
        super().__init__(f"job {job_id} is already {state}", job_id=job_id)
        self.state = state


class InputMismatch(OrchestratorError):
    """A start repeated with an input other than the one the job was created with."""

    def __init__(self, job_id: str):
        super().__init__(f"job {job_id} exists with a different input; a repeated start must "
                         "send the same input, or none", job_id=job_id)


class NotFailed(OrchestratorError):
    """Only a FAILED job can be redriven."""

    def __init__(self, job_id: str, state: str):
        super().__init__(f"job {job_id} is {state}; only a FAILED job can be redriven",
                         job_id=job_id)
        self.state = state


class JobIdInUse(OrchestratorError):
    def __init__(self, job_id: str, why: str):
        super().__init__(f"job id {job_id} {why}", job_id=job_id)


class StageError(OrchestratorError):
    """A stage attempt failed; ``status`` is the HTTP status when there was one."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        stage: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, job_id=job_id, stage=stage)
        self.status = status
        self.retry_after = retry_after


class TransientStageError(StageError):
    """Worth retrying: the service was unreachable, slow, throttled or broken for a while."""


class StageTimeout(TransientStageError):
    """The attempt ran out of its stage's time (HTTP read timeout or Celery's limits)."""


class PermanentStageError(StageError):
    """Retrying cannot help: the service refused the request or answered nonsense."""


class StageCancelled(StageError):
    """The attempt's call was cut because its job was failed by an operator meanwhile; the
    job and the attempt were closed by that call, so the stage writes nothing."""
