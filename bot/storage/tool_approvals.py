"""Tool-call approvals in the database, so the asker's press decides on whichever replica it lands.

Each decision is one conditional UPDATE (`WHERE status = 'pending'`): a press and the asking process's
timeout cannot both win, and two presses cannot both count. Functions take a session and never commit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import ToolApprovalRow

PENDING, APPROVED, DENIED, EXPIRED = "pending", "approved", "denied", "expired"


def add_approval(session: AsyncSession, row: ToolApprovalRow) -> None:
    session.add(row)


async def find_approval(session: AsyncSession, request_id: str) -> ToolApprovalRow | None:
    return await session.get(ToolApprovalRow, request_id, populate_existing=True)


async def settle(
    session: AsyncSession, request_id: str, status: str, decided_by: str | None, now: datetime
) -> bool:
    """Move a pending approval to `status`; False when it was no longer pending (someone else won)."""
    result = await session.execute(
        update(ToolApprovalRow)
        .where(ToolApprovalRow.id == request_id, ToolApprovalRow.status == PENDING)
        .values(status=status, decided_by=decided_by, decided_at=now)
        .execution_options(synchronize_session=False)
    )
    assert isinstance(result, CursorResult)
    return bool(result.rowcount == 1)


async def status_of(session: AsyncSession, request_id: str) -> tuple[str, str | None] | None:
    row = (
        await session.execute(
            select(ToolApprovalRow.status, ToolApprovalRow.decided_by).where(ToolApprovalRow.id == request_id)
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1])
