"""Refusal notes: one row per person with when they were last told why the bot did not answer.

Functions take a session and never commit.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.db import dialect_name
from bot.storage.models import RefusalNotice


async def claim_notice(
    session: AsyncSession, team_id: str, user_id: str, *, now: datetime, every: timedelta
) -> bool:
    """True for the one caller that may tell this person now (none told them within `every`).

    Both statements are claims: of two replicas racing, the conditional UPDATE changes the row for
    one only (PostgreSQL re-checks the condition after the first commits), and the INSERT of a first
    note conflicts for the other.
    """
    moved = await session.execute(
        update(RefusalNotice)
        .where(
            RefusalNotice.team_id == team_id,
            RefusalNotice.user_id == user_id,
            RefusalNotice.notified_at <= now - every,
        )
        .values(notified_at=now)
    )
    if _rowcount(moved) == 1:
        return True
    dialect = dialect_name(session)
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    created = await session.execute(
        insert(RefusalNotice)
        .values(team_id=team_id, user_id=user_id, notified_at=now)
        .on_conflict_do_nothing(index_elements=["team_id", "user_id"])
    )
    return _rowcount(created) == 1


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
