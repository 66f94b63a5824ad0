"""Upgrades run migrations first, then the workers, then the API (README, Operations), so
for a while the previous version runs on the new schema. That holds only while every
migration's upgrade adds (tables, columns with defaults or nullable, indexes, triggers)
and never drops or renames what the previous version reads or writes. A migration that
must take something away goes in two releases: stop using it, then drop it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

VERSIONS = Path(__file__).resolve().parents[2] / "db" / "migrations" / "versions"
#: Alembic operations that take away or rename what older code may use.
CONTRACTING = {"drop_table", "drop_column", "rename_table", "drop_constraint"}
#: Words of raw SQL that do the same (``op.execute``).
CONTRACTING_SQL = ("DROP TABLE", "DROP COLUMN", "RENAME ", "ALTER COLUMN")
#: Reviewed exceptions: (migration, what), each with why it is safe.
ALLOWED: dict[tuple[str, str], str] = {}


def _upgrade_calls(path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text())
    upgrade = next(node for node in tree.body
                   if isinstance(node, ast.FunctionDef) and node.name == "upgrade")
    found = []
    for node in ast.walk(upgrade):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name = node.func.attr
        if name in CONTRACTING:
            found.append((path.name, name))
        if name == "execute":
            for arg in ast.walk(node):
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    sql = arg.value.upper()
                    found += [(path.name, word.strip()) for word in CONTRACTING_SQL
                              if word in sql]
    return found


@pytest.mark.parametrize("path", sorted(VERSIONS.glob("[0-9]*.py")), ids=lambda p: p.name)
def test_each_upgrade_only_adds(path: Path) -> None:
    taken_away = [found for found in _upgrade_calls(path) if found not in ALLOWED]
    assert not taken_away, (
        f"{path.name} takes away what the previous version may still use: {taken_away}; "
        "split it over two releases (stop using it, then drop it) or review it into ALLOWED")


def test_the_check_sees_a_drop(tmp_path: Path) -> None:
    fake = tmp_path / "0099_probe.py"
    fake.write_text("def upgrade():\n    op.drop_column('jobs', 'x')\n"
                    "    op.execute('ALTER TABLE jobs RENAME COLUMN a TO b')\n"
                    "    op.execute('ALTER TABLE jobs ALTER COLUMN c TYPE text')\n"
                    "def downgrade():\n    op.drop_table('jobs')\n")
    assert _upgrade_calls(fake) == [(fake.name, "drop_column"), (fake.name, "RENAME"),
                                    (fake.name, "ALTER COLUMN")]
