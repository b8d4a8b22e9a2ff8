"""The agent surface: what a person views beside the bot's DM, and 👍/👎 votes on answers.

Revision ID: 0003_agent_surface
Revises: 0002
Create Date: 2026-12-01 10:39:11.511980+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_agent_surface"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agent_contexts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("viewing_channel_id", sa.String(length=64), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_contexts")),
        sa.UniqueConstraint("team_id", "channel_id", name=op.f("uq_agent_contexts_team_id_channel_id")),
    )
    op.create_table(
        "feedback_votes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=True),
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("message_ts", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=8), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback_votes")),
        sa.UniqueConstraint(
            "channel_id",
            "message_ts",
            "user_id",
            name=op.f("uq_feedback_votes_channel_id_message_ts_user_id"),
        ),
    )
    with op.batch_alter_table("feedback_votes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_votes_answered_at"), ["answered_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("feedback_votes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_votes_answered_at"))

    op.drop_table("feedback_votes")
    op.drop_table("agent_contexts")
