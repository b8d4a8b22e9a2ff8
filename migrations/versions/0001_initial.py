"""Initial schema: conversations, messages, the usage ledger, event dedupe and digest runs.

Revision ID: 0001
Revises: (none, first revision)
Create Date: 2026-11-25 17:33:14.008403+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Enums (kind, role, status) are stored by value in VARCHAR(16) with no CHECK constraint, so adding a
# value later needs no migration.
_ENUM = sa.String(length=16)
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("thread_ts", sa.String(length=32), nullable=False),
        sa.Column("kind", _ENUM, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
        sa.UniqueConstraint(
            "team_id", "channel_id", "thread_ts", name=op.f("uq_conversations_team_id_channel_id_thread_ts")
        ),
    )

    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("role", _ENUM, nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("slack_ts", sa.String(length=32), nullable=True),
        sa.Column("slack_ts_all", sa.JSON(), nullable=True),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("status", _ENUM, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_messages_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
    )
    op.create_index(
        "ix_messages_conversation_order", "messages", ["conversation_id", "created_at", "id"], unique=False
    )
    op.create_index(op.f("ix_messages_slack_ts"), "messages", ["slack_ts"], unique=False)
    op.create_index(op.f("ix_messages_status"), "messages", ["status"], unique=False)

    op.create_table(
        "usage_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=True),
        sa.Column("channel_id", sa.String(length=64), nullable=True),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("conversation_id", sa.Integer(), nullable=True),
        sa.Column("model_requested", sa.String(length=128), nullable=False),
        sa.Column("model_returned", sa.String(length=128), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("cached_tokens", sa.Integer(), nullable=True),
        sa.Column("reasoning_tokens", sa.Integer(), nullable=True),
        sa.Column("credits_used", sa.BigInteger(), nullable=True),
        sa.Column("usd_spent", sa.Numeric(precision=18, scale=9, asdecimal=False), nullable=True),
        sa.Column("finish_reason", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("ttft_ms", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("client_request_id", sa.String(length=128), nullable=True),
        sa.Column("inference_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        # The ledger outlives the conversation: deleting one only clears the link.
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_usage_records_conversation_id_conversations"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
    )
    op.create_index(
        op.f("ix_usage_records_conversation_id"), "usage_records", ["conversation_id"], unique=False
    )
    op.create_index(op.f("ix_usage_records_created_at"), "usage_records", ["created_at"], unique=False)

    op.create_table(
        "processed_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("message_ts", sa.String(length=32), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_processed_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_processed_events_event_id")),
        # One reply per person message, even when app_mention and message both deliver it.
        sa.UniqueConstraint(
            "channel_id", "message_ts", name=op.f("uq_processed_events_channel_id_message_ts")
        ),
    )
    op.create_index(
        op.f("ix_processed_events_received_at"), "processed_events", ["received_at"], unique=False
    )

    op.create_table(
        "digest_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("posted_at", _TS, nullable=True),
        sa.Column("slack_ts", sa.String(length=32), nullable=True),
        sa.Column("claimed_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_digest_runs")),
        sa.UniqueConstraint("day", "channel_id", name=op.f("uq_digest_runs_day_channel_id")),
    )


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints; children before the table they reference.
    op.drop_table("digest_runs")
    op.drop_table("processed_events")
    op.drop_table("usage_records")
    op.drop_table("messages")
    op.drop_table("conversations")
