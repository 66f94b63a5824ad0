"""The HTTP side of a stage attempt: one POST per the contract, classified by
:mod:`orchestrator.outcomes`."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import requests

from orchestrator.outcomes import classify_response, timeout_error, transport_error
from orchestrator.stages import StageSpec

CONNECT_TIMEOUT = 5.0
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class HttpDownstream:
    """Calls a stage's service; a Session per process keeps connections alive."""

    def __init__(self, token: str | None):
        self.token = token
        self.session = requests.Session()

    def __call__(self, spec: StageSpec, job_id: UUID, attempt: int, input: dict[str, Any],
                 correlation_id: str | None, timeout: float, allowed: int | None = None
                 ) -> dict[str, Any]:
        headers = {"Idempotency-Key": f"{job_id}:{spec.name}",
                   "X-Correlation-ID": correlation_id or ""}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        body: dict[str, Any] = {"job_id": str(job_id), "stage": spec.name, "attempt": attempt,
                                "input": input}
        timeout = max(timeout, 0.01)
        try:
            response = self.session.post(spec.url, json=body, headers=headers,
                                         timeout=(min(CONNECT_TIMEOUT, timeout), timeout))
        except requests.Timeout as exc:
            raise timeout_error(spec, attempt, allowed=allowed) from exc
        except requests.RequestException as exc:
            raise transport_error(spec, attempt, f"connection failed: {type(exc).__name__}",
                                  allowed) from exc
        return classify_response(spec, attempt, response.status_code, response.text,
                                 response.headers.get("Retry-After"), allowed)
