"""The suite runs in a random order on every run (README, Tests): pytest-randomly, pinned
in requirements-dev.lock, is installed by `make install` and registered as a pytest plugin,
so a plain `pytest` (as `make test` runs it) loads it. Without it every run would take one
order, and a test that passes only after another would never show. (`-p no:randomly`, to
replay a failure in file order, still works: only the installation is checked.)"""

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pytest_randomly_is_pinned_installed_and_a_pytest_plugin() -> None:
    assert "pytest-randomly==" in (ROOT / "requirements-dev.lock").read_text()
    try:
        plugin = distribution("pytest-randomly")
    except PackageNotFoundError:
        raise AssertionError("pytest-randomly is not installed: `make install`") from None
    assert any(e.group == "pytest11" for e in plugin.entry_points)
