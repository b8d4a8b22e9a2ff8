"""Turn places: per-thread turn order across replicas sharing one PostgreSQL database.

Revision ID: 0010_turn_order
Revises: 0009_tool_approvals
Create Date: 2026-12-01 13:45:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_turn_order"
down_revision: str | Sequence[str] | None = "0009_tool_approvals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Additive: replicas on older code never read it, and keep ordering turns within their process.
    op.create_table(
        "turn_places",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_turn_places_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_turn_places")),
    )
    with op.batch_alter_table("turn_places", schema=None) as batch_op:
        batch_op.create_index("ix_turn_places_line", ["conversation_id", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_turn_places_holder"), ["holder"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("turn_places", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_turn_places_holder"))
        batch_op.drop_index("ix_turn_places_line")
    op.drop_table("turn_places")
