"""The dependency rule holds by static analysis: the core imports no adapter, and so on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CORE_FORBIDDEN = {"api", "tasks", "db", "cli", "downstream", "sqlalchemy", "redis", "celery",
                  "flask", "requests", "kombu", "psycopg2"}
DOWNSTREAM_FORBIDDEN = {"orchestrator", "tasks", "api", "db", "cli"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str = "", is_package: bool = False) -> set[str]:
    """Every module a source imports, absolute: ``from a import b`` gives ``a.b``."""
    targets: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Name) and node.func.id == "__import__")
                   or (isinstance(node.func, ast.Attribute)
                       and node.func.attr == "import_module"))):
            targets.add(node.args[0].value)
    return targets


def _imports_of(path: Path) -> set[str]:
    return imported_modules(path.read_text(encoding="utf-8"), _module_name(path),
                            path.name == "__init__.py")


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def _top(name: str) -> str:
    return name.split(".")[0]


CORE_FILES = _files("orchestrator")
DOWNSTREAM_FILES = _files("downstream")
API_FILES = _files("api")


@pytest.mark.parametrize("files", [CORE_FILES, DOWNSTREAM_FILES, API_FILES],
                         ids=["orchestrator", "downstream", "api"])
def test_packages_are_found(files: list[Path]) -> None:
    assert files, "no .py files found: is ROOT right?"
    assert any(p.name == "__init__.py" for p in files)


@pytest.mark.parametrize("path", CORE_FILES, ids=_ids(CORE_FILES))
def test_core_imports_no_adapter_or_infrastructure(path: Path) -> None:
    bad = sorted(m for m in _imports_of(path) if _top(m) in CORE_FORBIDDEN)
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", DOWNSTREAM_FILES, ids=_ids(DOWNSTREAM_FILES))
def test_downstream_imports_nothing_of_the_orchestrator(path: Path) -> None:
    bad = sorted(m for m in _imports_of(path) if _top(m) in DOWNSTREAM_FORBIDDEN)
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", API_FILES, ids=_ids(API_FILES))
def test_api_imports_only_tasks_chain_from_tasks(path: Path) -> None:
    bad = sorted(m for m in _imports_of(path)
                 if _top(m) == "tasks" and not m.startswith("tasks.chain."))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad} (only tasks.chain is allowed)"


@pytest.mark.parametrize(("source", "expected"), [
    ("import redis", {"redis"}),
    ("import sqlalchemy.orm as orm", {"sqlalchemy.orm"}),
    ("from tasks import chain", {"tasks.chain"}),
    ("from tasks.chain import make_enqueuer", {"tasks.chain.make_enqueuer"}),
    ("def f():\n    from celery import Celery\n", {"celery.Celery"}),
    ("import importlib\nimportlib.import_module('db.models')", {"importlib", "db.models"}),
    ("__import__('flask')", {"flask"}),
])
def test_import_scanner_sees_every_form(source: str, expected: set[str]) -> None:
    assert imported_modules(source, "orchestrator.x") == expected


def test_import_scanner_resolves_relative_imports() -> None:
    assert imported_modules("from .states import State", "orchestrator.runner") == {
        "orchestrator.states.State"}
    assert imported_modules("from ..tasks import app", "api.sub.mod") == {"api.tasks.app"}
    assert imported_modules("from . import errors", "api", is_package=True) == {"api.errors"}


def test_no_module_per_stage_in_tasks():
    # The stage tasks are registered from the stage table in one loop (tasks/factory.py)
    from orchestrator.stages import STAGE_STATES

    copies = [s.value.lower() for s in STAGE_STATES
              if (ROOT / "tasks" / f"{s.value.lower()}.py").exists()]
    assert copies == [], f"per-stage modules in tasks/: {copies}"
