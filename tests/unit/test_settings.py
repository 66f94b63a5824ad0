"""Settings read the contract's defaults and overrides, and every bad value names its variable."""

from __future__ import annotations

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import Settings, redact_url
from orchestrator.states import State

STAGES = ["PLANNING", "PARSING", "ENRICHING", "COSTING"]


def test_defaults_from_empty_environment() -> None:
    s = Settings.from_env({})
    assert [spec.name for spec in s.stages] == STAGES
    assert [spec.timeout for spec in s.stages] == [300.0, 120.0, 180.0, 60.0]
    assert [spec.max_retries for spec in s.stages] == [2, 2, 1, 2]
    assert [spec.max_attempts for spec in s.stages] == [3, 3, 2, 3]
    assert s.retry_backoff_base == 2.0
    assert s.retry_backoff_max == 60.0
    assert s.retry_jitter is True
    assert s.lock_ttl == 300.0
    assert s.lock_key_prefix == "job:lock:"
    assert s.api_port == 8001
    assert s.downstream_port == 8002
    assert s.log_level == "INFO"
    assert s.startup_timeout == 30.0
    assert s.database_url is None and s.redis_url is None and s.broker_url is None
    assert s.api_tokens == () and s.downstream_token is None and s.auth_disabled is False


@pytest.mark.parametrize(("state", "path"), [(State.PLANNING, "/planning"),
                                             (State.PARSING, "/parsing"),
                                             (State.ENRICHING, "/enriching"),
                                             (State.COSTING, "/costing")])
def test_default_downstream_urls_on_port_8002(state: State, path: str) -> None:
    assert Settings.from_env({}).stage(state).url == f"http://127.0.0.1:8002{path}"


def test_default_downstream_urls_follow_downstream_port() -> None:
    s = Settings.from_env({"DOWNSTREAM_PORT": "9100"})
    assert s.downstream_port == 9100
    assert s.stage(State.COSTING).url == "http://127.0.0.1:9100/costing"


@pytest.mark.parametrize(("variable", "state"), [("TERRAFORM_EXECUTION_URL", State.PLANNING),
                                                 ("PLAN_INTERPRETER_URL", State.PARSING),
                                                 ("PRICING_ENRICHER_URL", State.ENRICHING),
                                                 ("COST_CALCULATOR_URL", State.COSTING)])
def test_downstream_url_override(variable: str, state: State) -> None:
    url = "https://svc.internal:8443/run"
    assert Settings.from_env({variable: url}).stage(state).url == url


@pytest.mark.parametrize("stage", STAGES)
def test_stage_timeout_and_retries_override(stage: str) -> None:
    s = Settings.from_env({f"{stage}_TIMEOUT": "12.5", f"{stage}_MAX_RETRIES": "5"})
    spec = s.stage(State(stage))
    assert spec.timeout == 12.5
    assert spec.max_retries == 5 and spec.max_attempts == 6
    others = [o for o in s.stages if o.name != stage]
    assert all(o.timeout != 12.5 and o.max_retries != 5 for o in others)


def test_zero_retries_means_one_attempt() -> None:
    spec = Settings.from_env({"COSTING_MAX_RETRIES": "0"}).stage(State.COSTING)
    assert spec.max_retries == 0 and spec.max_attempts == 1


@pytest.mark.parametrize(("variable", "value", "attribute", "expected"), [
    ("RETRY_BACKOFF_BASE", "3", "retry_backoff_base", 3.0),
    ("RETRY_BACKOFF_MAX", "90", "retry_backoff_max", 90.0),
    ("RETRY_JITTER", "false", "retry_jitter", False),
    ("RETRY_JITTER", "0", "retry_jitter", False),
    ("RETRY_JITTER", "TRUE", "retry_jitter", True),
    ("LOCK_TTL", "45", "lock_ttl", 45.0),
    ("LOCK_KEY_PREFIX", "x:lock:", "lock_key_prefix", "x:lock:"),
    ("ORCHESTRATOR_PORT", "9001", "api_port", 9001),
    ("DOWNSTREAM_PORT", "9002", "downstream_port", 9002),
    ("LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("DATABASE_URL", "postgresql://u:p@db:5432/jobs", "database_url",
     "postgresql://u:p@db:5432/jobs"),
    ("REDIS_URL", "redis://cache:6379/1", "redis_url", "redis://cache:6379/1"),
    ("DOWNSTREAM_TOKEN", "dt", "downstream_token", "dt"),
    ("ORCHESTRATOR_AUTH_DISABLED", "true", "auth_disabled", True),
    ("STARTUP_TIMEOUT", "2.5", "startup_timeout", 2.5),
    ("STARTUP_TIMEOUT", "0", "startup_timeout", 0.0),  # one try, no waiting
])
def test_override_is_read(variable: str, value: str, attribute: str, expected: object) -> None:
    assert getattr(Settings.from_env({variable: value}), attribute) == expected


def test_empty_value_means_default() -> None:
    s = Settings.from_env({"PLANNING_TIMEOUT": "  ", "RETRY_JITTER": "", "LOG_LEVEL": ""})
    assert s.stage(State.PLANNING).timeout == 300.0
    assert s.retry_jitter is True
    assert s.log_level == "INFO"


BAD_VALUES = [
    ("PLANNING_TIMEOUT", "five"),
    ("PARSING_TIMEOUT", "0"),
    ("ENRICHING_TIMEOUT", "-3"),
    ("COSTING_TIMEOUT", "nan"),
    ("PLANNING_MAX_RETRIES", "-1"),
    ("COSTING_MAX_RETRIES", "1.5"),
    ("ENRICHING_MAX_RETRIES", "many"),
    ("RETRY_BACKOFF_BASE", "fast"),
    ("RETRY_BACKOFF_MAX", "-1"),
    ("RETRY_JITTER", "maybe"),
    ("LOCK_TTL", "0"),
    ("TERRAFORM_EXECUTION_URL", "ftp://host/planning"),
    ("PLAN_INTERPRETER_URL", "localhost:8002/parsing"),
    ("PRICING_ENRICHER_URL", "http:///enriching"),
    ("COST_CALCULATOR_URL", "redis://host/costing"),
    ("DATABASE_URL", "mysql://u:p@db/jobs"),
    ("DATABASE_URL", "http://db/jobs"),
    ("REDIS_URL", "http://cache:6379"),
    ("CELERY_BROKER_URL", "http://broker"),
    ("LOG_LEVEL", "LOUD"),
    ("ORCHESTRATOR_PORT", "0"),
    ("ORCHESTRATOR_PORT", "http"),
    ("DOWNSTREAM_PORT", "0"),
    ("ORCHESTRATOR_AUTH_DISABLED", "perhaps"),
    ("STARTUP_TIMEOUT", "soon"),
    ("STARTUP_TIMEOUT", "-1"),
    ("STARTUP_TIMEOUT", "inf"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_bad_value_raises_config_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    assert info.value.variable == variable
    assert variable in str(info.value)


@pytest.mark.parametrize("variable", ["ORCHESTRATOR_PORT", "DOWNSTREAM_PORT"])
def test_port_above_65535_is_rejected(variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: "70000"})
    assert info.value.variable == variable


@pytest.mark.parametrize(("raw", "tokens"), [
    ("a", ("a",)),
    ("a,b", ("a", "b")),
    (" a , b ,, c ,", ("a", "b", "c")),
    (",,", ()),
    ("", ()),
])
def test_api_tokens_split_trim_and_drop_empties(raw: str, tokens: tuple[str, ...]) -> None:
    assert Settings.from_env({"ORCHESTRATOR_API_TOKENS": raw}).api_tokens == tokens


def test_require_api_tokens_raises_without_tokens() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({}).require_api_tokens()
    assert info.value.variable == "ORCHESTRATOR_API_TOKENS"
    assert "ORCHESTRATOR_API_TOKENS" in str(info.value)


def test_require_api_tokens_passes_with_tokens() -> None:
    Settings.from_env({"ORCHESTRATOR_API_TOKENS": "t1,t2"}).require_api_tokens()


def test_require_api_tokens_passes_when_auth_disabled() -> None:
    Settings.from_env({"ORCHESTRATOR_AUTH_DISABLED": "true"}).require_api_tokens()


def test_require_api_tokens_raises_when_auth_explicitly_enabled() -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({"ORCHESTRATOR_AUTH_DISABLED": "false"}).require_api_tokens()


def test_broker_defaults_to_redis_url() -> None:
    s = Settings.from_env({"REDIS_URL": "redis://cache:6379/0"})
    assert s.broker_url == "redis://cache:6379/0"


def test_celery_broker_url_overrides_the_broker() -> None:
    s = Settings.from_env({"REDIS_URL": "redis://cache:6379/0",
                           "CELERY_BROKER_URL": "amqp://guest@rabbit:5672//"})
    assert s.broker_url == "amqp://guest@rabbit:5672//"
    assert s.redis_url == "redis://cache:6379/0"


def test_require_services_names_the_missing_variable() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": "redis://cache"}).require_services()
    assert info.value.variable == "DATABASE_URL"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DATABASE_URL": "postgresql://db/jobs"}).require_services()
    assert info.value.variable == "REDIS_URL"


def test_repr_never_contains_a_token() -> None:
    s = Settings.from_env({"ORCHESTRATOR_API_TOKENS": "apitok-SECRET-4f1a,apitok-SECRET-9b2c",
                           "DOWNSTREAM_TOKEN": "dstok-SECRET-77e3"})
    assert s.api_tokens and s.downstream_token
    for text in (repr(s), str(s)):
        assert "apitok-SECRET" not in text
        assert "dstok-SECRET" not in text


def test_stage_lookup_of_a_non_working_state_raises_key_error() -> None:
    with pytest.raises(KeyError):
        Settings.from_env({}).stage(State.COMPLETED)


@pytest.mark.parametrize(("url", "redacted"), [
    ("postgresql://user:hunter2@db:5432/jobs", "postgresql://user:***@db:5432/jobs"),
    ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
    ("postgresql://user:p%40ss@db/jobs", "postgresql://user:***@db/jobs"),
])
def test_redact_url_hides_the_password(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert "hunter2" not in (redact_url(url) or "")


@pytest.mark.parametrize("url", ["postgresql://user@db/jobs", "redis://cache:6379/0", "", None])
def test_redact_url_leaves_urls_without_password_alone(url: str | None) -> None:
    assert redact_url(url) == url
