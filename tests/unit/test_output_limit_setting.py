"""MAX_STAGE_OUTPUT_BYTES: 1 MiB by default; a bad value names the variable."""

from __future__ import annotations

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import Settings


def test_the_default_is_one_mebibyte() -> None:
    assert Settings.from_env({}).max_stage_output_bytes == 1048576
    assert Settings.from_env({"MAX_STAGE_OUTPUT_BYTES": "4096"}).max_stage_output_bytes == 4096


@pytest.mark.parametrize("value", ["1MiB", "0", "1023", "-5", "2.5", str(2**31)])
def test_a_bad_value_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"MAX_STAGE_OUTPUT_BYTES": value})
    assert "MAX_STAGE_OUTPUT_BYTES" in str(error.value)
