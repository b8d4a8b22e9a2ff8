"""The ledger by workspace and time: the workspace budget's monthly sum, on every turn, reads an index.

Revision ID: 0013_usage_team_index
Revises: 0012_turn_handoff
Create Date: 2026-12-01 17:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013_usage_team_index"
down_revision: str | Sequence[str] | None = "0012_turn_handoff"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Additive: older replicas never notice it. Covering (the credits too): the sum reads no table row.
    op.create_index(
        "ix_usage_records_team_created",
        "usage_records",
        ["team_id", "created_at", "credits_used"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_usage_records_team_created", table_name="usage_records")
