"""Slack budgets shared by replicas: one row per (workspace, method), and the replicas drawing on them.

Revision ID: 0011_slack_budgets
Revises: 0010_turn_order
Create Date: 2026-12-01 13:45:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_slack_budgets"
down_revision: str | Sequence[str] | None = "0010_turn_order"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "slack_budgets",
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("tat", sa.Double(), nullable=False),
        sa.Column("blocked_until", sa.Double(), nullable=False),
        sa.Column("rate_per_minute", sa.Double(), nullable=False),
        sa.Column("last_penalty", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "method", name=op.f("pk_slack_budgets")),
    )
    op.create_table(
        "slack_budget_replicas",
        sa.Column("replica_id", sa.String(length=64), nullable=False),
        sa.Column("seen_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("replica_id", name=op.f("pk_slack_budget_replicas")),
    )


def downgrade() -> None:
    op.drop_table("slack_budget_replicas")
    op.drop_table("slack_budgets")
