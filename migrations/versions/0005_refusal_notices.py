"""Refusal notes: when a person the bot refused was last told why (once an hour each).

Revision ID: 0005_refusal_notices
Revises: 0004_stopped_usage
Create Date: 2026-12-01 11:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_refusal_notices"
down_revision: str | Sequence[str] | None = "0004_stopped_usage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "refusal_notices",
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("notified_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "user_id", name=op.f("pk_refusal_notices")),
    )


def downgrade() -> None:
    op.drop_table("refusal_notices")
