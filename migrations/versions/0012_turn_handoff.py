"""Turn hand-off: a waiting turn's arrival and start mark on its place, so another replica can run it.

Revision ID: 0012_turn_handoff
Revises: 0011_slack_budgets
Create Date: 2026-12-01 14:30:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_turn_handoff"
down_revision: str | Sequence[str] | None = "0011_slack_budgets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Additive and nullable: older replicas write places without an arrival, which are never adopted.
    with op.batch_alter_table("turn_places", schema=None) as batch_op:
        batch_op.add_column(sa.Column("arrival", sa.JSON(none_as_null=True), nullable=True))
        batch_op.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("turn_places", schema=None) as batch_op:
        batch_op.drop_column("started_at")
        batch_op.drop_column("arrival")
