""".env.example lists every setting with its real default: parsed as an environment it
gives exactly the settings of an empty environment, and no variable the code reads is
missing from it."""

from __future__ import annotations

import re
from pathlib import Path

from downstream.config import DownstreamConfig
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
READERS = ["orchestrator/settings.py", "orchestrator/stages.py", "downstream/config.py",
           "cli/embedded.py"]


def example() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def variables_read_by_the_code() -> set[str]:
    names: set[str] = set()
    for path in READERS:
        text = (ROOT / path).read_text()
        names |= set(re.findall(r'"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)"', text))
    names |= {f"{stage}_{what}" for stage in ("PLANNING", "PARSING", "ENRICHING", "COSTING")
              for what in ("TIMEOUT", "MAX_RETRIES")}
    # Not settings: the desktop's data directory; the marker and home a local stack gives
    # its own processes (cli/embedded.py); what a worker's supervisor hands its processes
    # (cli/workers.py); and a sysconf name, not a variable.
    return names - {"XDG_DATA_HOME", "ORCHESTRATOR_STACK_ID", "ORCHESTRATOR_STACK_HOME",
                    "ORCHESTRATOR_WORKER_METRICS_DIR", "ORCHESTRATOR_WORKER_SHARES",
                    "SC_CLK_TCK"}


def test_the_listed_values_are_the_defaults():
    assert Settings.from_env(example()) == Settings.from_env({})
    listed = DownstreamConfig.from_env(example())
    default = DownstreamConfig.from_env({})
    assert (listed.token, listed.data_dir) == (default.token, default.data_dir)


def test_every_variable_the_code_reads_is_listed():
    assert variables_read_by_the_code() - set(example()) == set()


def readme_configuration_table() -> set[str]:
    """Every variable named in the first column of README's configuration table (a row
    may name several: `A` / `_B` stands for A and A's prefix with _B)."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Configuration", 1)[1].split("\n### ", 1)[0]
    names: set[str] = set()
    for row in table.splitlines():
        if not row.startswith("| `"):
            continue
        first = row.split(" | ", 1)[0]
        for token in re.findall(r"`([A-Z_][A-Z0-9_]*)`", first):
            if token.startswith("_"):  # PLANNING_TIMEOUT / _MAX_RETRIES
                stem = re.findall(r"`([A-Z][A-Z0-9]*)_", first)[0]
                token = stem + token
            names.add(token)
    return names


def test_the_readme_configuration_table_lists_every_setting():
    listed = readme_configuration_table()
    # in .env.example (FLOWER_BASIC_AUTH commented out there: Flower reads it, not us)
    expected = set(example()) | {"FLOWER_BASIC_AUTH", "PROMETHEUS_MULTIPROC_DIR"}
    assert expected - listed == set(), "settings missing from README's configuration table"
    assert listed - expected == set(), "README's configuration table names unknown settings"
