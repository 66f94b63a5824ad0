"""Every downstream HTTP outcome is classified per the contract: output, transient or permanent."""

from __future__ import annotations

import json

import pytest

from orchestrator.errors import PermanentStageError, StageError, TransientStageError
from orchestrator.outcomes import classify_response, transport_error
from orchestrator.settings import Settings
from orchestrator.stages import StageSpec
from orchestrator.states import State

SETTINGS = Settings.from_env({})
PLANNING = SETTINGS.stage(State.PLANNING)
PARSING = SETTINGS.stage(State.PARSING)
ENRICHING = SETTINGS.stage(State.ENRICHING)
COSTING = SETTINGS.stage(State.COSTING)

GOOD_BODY = {
    State.PLANNING: {"plan_reference": "plan-1", "extra": [1, 2]},
    State.PARSING: {"resources": [{"address": "aws_instance.web"}]},
    State.ENRICHING: {"resources": [], "catalog": {"source": "aws"}},
    State.COSTING: {"result_reference": "res-1", "currency": "USD"},
}


def _classify(spec: StageSpec, status: int, body: str, retry_after: str | None = None,
              attempt: int = 1) -> dict:
    return classify_response(spec, attempt, status, body, retry_after)


@pytest.mark.parametrize("spec", [PLANNING, PARSING, ENRICHING, COSTING], ids=lambda s: s.name)
@pytest.mark.parametrize("status", [200, 201, 202, 299])
def test_2xx_json_object_is_returned_whole(spec: StageSpec, status: int) -> None:
    body = GOOD_BODY[spec.state]
    assert _classify(spec, status, json.dumps(body)) == body


def test_200_with_html_body_is_permanent_not_json() -> None:
    with pytest.raises(PermanentStageError) as info:
        _classify(PARSING, 200, "<html><body>Bad Gateway</body></html>")
    assert "not JSON" in str(info.value)
    assert info.value.status == 200 and info.value.stage == "PARSING"


def test_200_with_empty_body_is_permanent() -> None:
    with pytest.raises(PermanentStageError, match="not JSON"):
        _classify(PARSING, 200, "")


@pytest.mark.parametrize("body", ["[1, 2]", '"text"', "42", "null"])
def test_200_with_json_non_object_is_permanent(body: str) -> None:
    with pytest.raises(PermanentStageError) as info:
        _classify(ENRICHING, 200, body)
    assert "not an object" in str(info.value)


@pytest.mark.parametrize("body", [{}, {"plan_reference": ""}, {"plan_reference": "   "},
                                  {"plan_reference": None}, {"other": "x"}])
def test_planning_without_plan_reference_is_permanent(body: dict) -> None:
    with pytest.raises(PermanentStageError) as info:
        _classify(PLANNING, 200, json.dumps(body))
    assert "plan_reference" in str(info.value)
    assert info.value.stage == "PLANNING"


@pytest.mark.parametrize("body", [{}, {"result_reference": ""}, {"currency": "USD"}])
def test_costing_without_result_reference_is_permanent(body: dict) -> None:
    with pytest.raises(PermanentStageError) as info:
        _classify(COSTING, 200, json.dumps(body))
    assert "result_reference" in str(info.value)


@pytest.mark.parametrize("spec", [PARSING, ENRICHING], ids=lambda s: s.name)
def test_stages_without_required_field_accept_any_object(spec: StageSpec) -> None:
    assert _classify(spec, 200, "{}") == {}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_other_4xx_is_permanent_with_status(status: int) -> None:
    with pytest.raises(PermanentStageError) as info:
        _classify(COSTING, status, '{"error": {"code": "x", "message": "nope"}}')
    assert info.value.status == status
    assert info.value.stage == "COSTING"
    assert f"HTTP {status}" in str(info.value)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_transient(status: int) -> None:
    with pytest.raises(TransientStageError) as info:
        _classify(PLANNING, status, "busy")
    assert info.value.status == status
    assert info.value.stage == "PLANNING"
    assert info.value.retry_after is None


@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_honour_retry_after(status: int) -> None:
    with pytest.raises(TransientStageError) as info:
        _classify(COSTING, status, "slow down", retry_after="7")
    assert info.value.retry_after == 7.0


@pytest.mark.parametrize("status", [408, 500, 502, 504])
def test_other_transient_statuses_ignore_retry_after(status: int) -> None:
    with pytest.raises(TransientStageError) as info:
        _classify(COSTING, status, "oops", retry_after="7")
    assert info.value.retry_after is None


def test_unreadable_retry_after_is_none() -> None:
    with pytest.raises(TransientStageError) as info:
        _classify(COSTING, 429, "slow down", retry_after="whenever")
    assert info.value.retry_after is None


def test_permanent_message_format_with_error_object() -> None:
    body = '{"error": {"code": "x", "message": "unsupported currency"}}'
    with pytest.raises(PermanentStageError) as info:
        _classify(COSTING, 400, body)
    assert str(info.value) == ("COSTING attempt 1/3: HTTP 400 from cost calculator: "
                               "unsupported currency")


def test_message_counts_attempts_against_the_stage_limit() -> None:
    with pytest.raises(TransientStageError) as info:
        _classify(ENRICHING, 502, "upstream down", attempt=2)
    assert str(info.value) == ("ENRICHING attempt 2/2: HTTP 502 from pricing enricher: "
                               "upstream down")


@pytest.mark.parametrize(("body", "text"), [
    ('{"error": "bad plan"}', "bad plan"),
    ('{"message": "bad plan"}', "bad plan"),
    ('{"error": {"message": "bad plan"}, "message": "ignored"}', "bad plan"),
    ("plain failure text", "plain failure text"),
    ("", "(empty body)"),
    ("   \n\t ", "(empty body)"),
    ("line one\n\n   line\ttwo  ", "line one line two"),
    ('{"error": {"message": "multi\\n   line"}}', "multi line"),
])
def test_service_error_text_in_message(body: str, text: str) -> None:
    with pytest.raises(PermanentStageError) as info:
        _classify(PARSING, 422, body)
    assert str(info.value) == f"PARSING attempt 1/3: HTTP 422 from plan interpreter: {text}"


def test_long_body_is_truncated_to_300_chars_ending_with_ellipsis() -> None:
    with pytest.raises(TransientStageError) as info:
        _classify(COSTING, 500, "x" * 10_000)
    prefix = "COSTING attempt 1/3: HTTP 500 from cost calculator: "
    message = str(info.value)
    assert message.startswith(prefix)
    text = message[len(prefix):]
    assert len(text) <= 300
    assert text.endswith("…")
    assert set(text[:-1]) == {"x"}


def test_long_non_json_2xx_body_is_truncated_too() -> None:
    with pytest.raises(PermanentStageError) as info:
        _classify(COSTING, 200, "<p>" + "y" * 10_000)
    assert len(str(info.value)) < 400
    assert str(info.value).endswith("…")


@pytest.mark.parametrize(("status", "error"), [(200, PermanentStageError),
                                               (500, TransientStageError)])
def test_deeply_nested_body_is_still_classified(status: int, error: type[StageError]) -> None:
    with pytest.raises(error):
        _classify(COSTING, status, "[" * 100_000)


@pytest.mark.parametrize("spec", [PLANNING, PARSING, ENRICHING, COSTING], ids=lambda s: s.name)
def test_transport_error_is_transient_and_names_stage_and_attempt(spec: StageSpec) -> None:
    error = transport_error(spec, 2, "connection failed: ConnectionError")
    assert isinstance(error, TransientStageError)
    assert error.stage == spec.name
    assert error.status is None and error.retry_after is None
    assert str(error).startswith(f"{spec.name} attempt 2/{spec.max_attempts}: ")
    assert "connection failed: ConnectionError" in str(error)
    assert spec.definition.service in str(error)


@pytest.mark.parametrize(("value", "problem"), [
    ({"a": "x\x00y"}, "NUL"), ({"k\x00": 1}, "NUL"), ({"a": ["\ud800"]}, "surrogate"),
    ({"a": {"b": [{"c": "ok"}]}}, None), ({"emoji": "\U0001f600"}, None)])
def test_what_postgresql_cannot_store_is_named(value, problem):
    from orchestrator.outcomes import unstorable

    found = unstorable(value)
    assert (found is None) if problem is None else (problem in found)


def test_an_output_postgresql_cannot_store_is_a_permanent_error() -> None:
    with pytest.raises(PermanentStageError, match="NUL character"):
        classify_response(COSTING, 1, 200, '{"result_reference": "r", "x": "a\\u0000b"}', None)
