"""Reply leases and split points for recovery; one ledger row per upstream request.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 07:35:31.251529+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows streamed by older code get no lease (NULL): recovery takes them as expired.
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slack_parts", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("request_id", sa.String(length=128), nullable=True))

    # Request ids are random per call, so duplicates should not exist; should one, the oldest row keeps
    # it rather than the upgrade failing on the new unique constraint.
    op.execute(
        "UPDATE usage_records SET client_request_id = NULL WHERE client_request_id IS NOT NULL "
        "AND id NOT IN (SELECT MIN(id) FROM usage_records WHERE client_request_id IS NOT NULL "
        "GROUP BY client_request_id)"
    )
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            batch_op.f("uq_usage_records_client_request_id"), ["client_request_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_usage_records_client_request_id"), type_="unique")

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("request_id")
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("slack_parts")
