"""Expand, then contract (README: Rolling upgrades): a migration's upgrade only adds.

During a rolling upgrade the previous release's replicas run on the new schema, so an upgrade may add
tables, nullable columns (or ones with a server default), indexes and constraints, but not drop,
rename or tighten what the previous release reads and writes. Those contract steps ship in a later
release, once no replica runs code that uses the old shape, and are listed in CONTRACT_STEPS with why.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from bot.storage.migrate import script_location

VERSIONS = script_location() / "versions"

# revision file stem -> why its contract step is safe (e.g. "the column is unread since 0012_x").
CONTRACT_STEPS: dict[str, str] = {}

_DESTRUCTIVE_CALLS = {"drop_column", "drop_table", "rename_table"}
_DESTRUCTIVE_SQL = re.compile(r"\b(DROP\s+(TABLE|COLUMN)|RENAME\b|SET\s+NOT\s+NULL)", re.IGNORECASE)


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def _is_false(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _column_without_default_is_required(column: ast.expr) -> bool:
    """sa.Column(..., nullable=False) without a server_default: inserts by the old code would fail."""
    return (
        isinstance(column, ast.Call)
        and _is_false(_keyword(column, "nullable"))
        and _keyword(column, "server_default") is None
    )


def contract_steps(source: str) -> list[str]:
    """What the `upgrade()` in a migration's source does that the previous release cannot live with."""
    upgrade = next(
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef) and node.name == "upgrade"
    )
    found: list[str] = []
    for node in ast.walk(upgrade):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = node.func.attr
        if name in _DESTRUCTIVE_CALLS:
            found.append(name)
        elif name == "alter_column":
            if _keyword(node, "new_column_name") is not None:
                found.append("alter_column rename")
            if _is_false(_keyword(node, "nullable")):
                found.append("alter_column nullable=False")
        elif name == "add_column" and node.args and _column_without_default_is_required(node.args[-1]):
            found.append("add_column NOT NULL without server_default")
        elif name == "execute" and node.args:
            sql = node.args[0]
            if (
                isinstance(sql, ast.Constant)
                and isinstance(sql.value, str)
                and _DESTRUCTIVE_SQL.search(sql.value)
            ):
                found.append(f"execute {_DESTRUCTIVE_SQL.search(sql.value).group(0)!r}")  # type: ignore[union-attr]
    return found


MIGRATIONS = sorted(path for path in VERSIONS.glob("*.py") if path.stem != "__init__")


@pytest.mark.parametrize("path", MIGRATIONS, ids=lambda path: path.stem)
def test_every_migration_upgrade_only_expands_unless_listed_as_a_contract_step(path: Path):
    steps = contract_steps(path.read_text(encoding="utf-8"))
    if path.stem in CONTRACT_STEPS:
        assert steps, f"{path.stem} is listed in CONTRACT_STEPS but contracts nothing: remove it"
    else:
        assert steps == [], (
            f"{path.name}: {steps} in upgrade() breaks replicas still on the previous release. Expand first; "
            "drop or rename in a later release, listed in CONTRACT_STEPS (README: Rolling upgrades)"
        )


def test_contract_steps_name_real_migrations_and_say_why():
    stems = {path.stem for path in MIGRATIONS}
    for stem, why in CONTRACT_STEPS.items():
        assert stem in stems and why.strip()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('op.drop_table("old")', ["drop_table"]),
        ('with op.batch_alter_table("t") as b:\n        b.drop_column("c")', ["drop_column"]),
        ('op.alter_column("t", "a", new_column_name="b")', ["alter_column rename"]),
        ('op.alter_column("t", "a", nullable=False)', ["alter_column nullable=False"]),
        (
            'op.add_column("t", sa.Column("c", sa.Integer(), nullable=False))',
            ["add_column NOT NULL without server_default"],
        ),
        ('op.execute("ALTER TABLE t DROP COLUMN c")', ["execute 'DROP COLUMN'"]),
        ('op.add_column("t", sa.Column("c", sa.Integer(), nullable=True))', []),
        ('op.add_column("t", sa.Column("c", sa.Boolean(), server_default=sa.false(), nullable=False))', []),
        ('op.create_table("new", sa.Column("id", sa.Integer(), primary_key=True))', []),
    ],
)
def test_the_rule_tells_expanding_from_contracting(body: str, expected: list[str]):
    source = f"def downgrade():\n    op.drop_table('new')\n\n\ndef upgrade():\n    {body}\n"
    assert contract_steps(source) == expected
