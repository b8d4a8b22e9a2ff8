"""Usage rows whose token counts are estimated (a stopped stream reports no usage).

Revision ID: 0004_stopped_usage
Revises: 0003_agent_surface
Create Date: 2026-12-01 10:45:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_stopped_usage"
down_revision: str | Sequence[str] | None = "0003_agent_surface"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every existing row carries the model's own counts (or NULL): not estimated.
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("tokens_estimated", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_column("tokens_estimated")
