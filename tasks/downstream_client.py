"""The HTTP side of a stage attempt: one POST per the contract, classified by
:mod:`orchestrator.outcomes`, cut at the attempt's deadline or on cancellation by
:mod:`tasks.inflight` whatever the pool."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

import requests

from orchestrator.errors import StageCancelled
from orchestrator.metrics import NO_METRICS, Recorder
from orchestrator.outcomes import (
    attempt_label,
    classify_response,
    timeout_error,
    too_large_error,
    transport_error,
)
from orchestrator.stages import StageSpec
from tasks.inflight import CuttableAdapter, InFlight

CONNECT_TIMEOUT = 5.0
#: Read size of a reply: the watchdog and the size cap act between reads.
CHUNK_BYTES = 64 * 1024


class HttpDownstream:
    """Calls a stage's service; a Session per process keeps connections alive (urllib3's
    pool is thread-safe, and sized for the threads that share it)."""

    def __init__(self, token: str | None, inflight: InFlight | None = None,
                 connections: int = 10, max_output_bytes: int = 1 << 20,
                 metrics: Recorder = NO_METRICS):
        self.token = token
        self.metrics = metrics
        self.max_output_bytes = max_output_bytes
        self.inflight = inflight or InFlight()
        self.session = requests.Session()
        # The proxy settings of the environment are read once per URL, not on every call
        # (requests would look up HTTP(S)_PROXY/NO_PROXY and ~/.netrc each time: a
        # measurable part of a stage's CPU); the Authorization header is ours.
        self.session.trust_env = False
        self._proxies: dict[str, dict[str, str]] = {}
        adapter = CuttableAdapter(pool_connections=4, pool_maxsize=max(connections, 1))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def _proxies_for(self, url: str) -> dict[str, str]:
        proxies = self._proxies.get(url)
        if proxies is None:
            proxies = self._proxies[url] = requests.utils.get_environ_proxies(url)
        return proxies

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
        with self.inflight.until(time.monotonic() + timeout) as call:
            try:
                response = self.session.post(spec.url, json=body, headers=headers,
                                             timeout=(min(CONNECT_TIMEOUT, timeout), timeout),
                                             proxies=self._proxies_for(spec.url), stream=True)
                with response:
                    data, size, declared = self._read(response)
            except requests.RequestException as exc:
                if call.cut_reason == "cancelled":
                    raise StageCancelled(f"{attempt_label(spec, attempt, allowed)}: cancelled "
                                         "while calling the service", stage=spec.name) from exc
                if call.cut_reason == "timeout" or isinstance(exc, requests.Timeout):
                    raise timeout_error(spec, attempt, allowed=allowed) from exc
                raise transport_error(spec, attempt,
                                      f"connection failed: {type(exc).__name__}",
                                      allowed) from exc
        self.metrics.downstream_status(spec.name, response.status_code)
        if size > self.max_output_bytes and 200 <= response.status_code < 300:
            raise too_large_error(spec, attempt, size, self.max_output_bytes,
                                  declared=declared, allowed=allowed)
        # (an error reply past the cap is classified by its status, on what was read)
        text = data.decode(response.encoding or "utf-8", errors="replace")
        return classify_response(spec, attempt, response.status_code, text,
                                 response.headers.get("Retry-After"), allowed)

    def _read(self, response: requests.Response) -> tuple[bytes, int, bool]:
        """The reply's body, never more than the cap buffered: (the bytes read, the size
        seen, whether that size is the one Content-Length declared). A size over the cap
        means reading stopped there, or never began."""
        limit = self.max_output_bytes
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            return b"", int(length), True
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_content(CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                return b"".join(chunks), size, False
            chunks.append(chunk)
        return b"".join(chunks), size, False
