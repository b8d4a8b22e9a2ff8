"""The (day, channel) lock that makes the usage digest post once, across replicas and restarts.

A row is a claim; `posted_at` set means the post landed. A claim whose post failed is released by
backdating it, so it stays visible as "still to post" and the next run takes it over at once. A claim
left behind by a crashed process goes stale after `STALE_AFTER` and is taken over the same way.
Functions take a session and never commit: commit the claim before posting so other replicas see it.
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Insert, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import DigestRun, utcnow

STALE_AFTER = timedelta(minutes=10)
# A released claim is older than any cutoff, so it can be re-claimed immediately.
_RELEASED_AT = datetime(2000, 1, 1, tzinfo=UTC)


class Claim(enum.StrEnum):
    CLAIMED = "claimed"  # this caller won and must post, then mark_posted or release
    POSTED = "posted"  # already posted: nothing to do
    IN_PROGRESS = "in_progress"  # another process holds a fresh claim


def _insert_if_absent(dialect: str) -> Insert:
    # ON CONFLICT DO NOTHING instead of catching IntegrityError: the loser's transaction stays clean
    # and PostgreSQL makes a concurrent inserter wait for the winner's commit before deciding.
    if dialect == "postgresql":
        return postgresql.insert(DigestRun).on_conflict_do_nothing(index_elements=["day", "channel_id"])
    if dialect == "sqlite":
        return sqlite.insert(DigestRun).on_conflict_do_nothing(index_elements=["day", "channel_id"])
    raise ValueError(f"unsupported database dialect {dialect!r}")


async def claim(
    session: AsyncSession,
    day: date,
    channel_id: str,
    *,
    now: datetime | None = None,
    stale_after: timedelta = STALE_AFTER,
) -> Claim:
    # SQLite stores timestamps without their offset: compare and store UTC only.
    now = (now or utcnow()).astimezone(UTC)
    dialect = session.get_bind().dialect.name
    inserted = await session.execute(
        _insert_if_absent(dialect)
        .values(day=day, channel_id=channel_id, claimed_at=now)
        .returning(DigestRun.id)
    )
    if inserted.scalar_one_or_none() is not None:
        return Claim.CLAIMED
    # The row exists. Take it over only if unposted and stale: the WHERE is evaluated under the row
    # lock, so of two racers exactly one UPDATE matches.
    taken = await session.execute(
        update(DigestRun)
        .where(
            DigestRun.day == day,
            DigestRun.channel_id == channel_id,
            DigestRun.posted_at.is_(None),
            DigestRun.claimed_at < now - stale_after,
        )
        .values(claimed_at=now)
        .returning(DigestRun.id)
    )
    if taken.scalar_one_or_none() is not None:
        return Claim.CLAIMED
    posted = await session.scalar(
        select(DigestRun.posted_at).where(DigestRun.day == day, DigestRun.channel_id == channel_id)
    )
    return Claim.POSTED if posted is not None else Claim.IN_PROGRESS


async def mark_posted(
    session: AsyncSession, day: date, channel_id: str, slack_ts: str, *, now: datetime | None = None
) -> None:
    await session.execute(
        update(DigestRun)
        .where(DigestRun.day == day, DigestRun.channel_id == channel_id)
        .values(posted_at=(now or utcnow()).astimezone(UTC), slack_ts=slack_ts)
    )


async def release(session: AsyncSession, day: date, channel_id: str) -> None:
    """Give up a claim whose post failed; the day stays unposted, so the next run posts it."""
    await session.execute(
        update(DigestRun)
        .where(DigestRun.day == day, DigestRun.channel_id == channel_id, DigestRun.posted_at.is_(None))
        .values(claimed_at=_RELEASED_AT)
    )


async def first_day(session: AsyncSession, channel_id: str) -> date | None:
    """The earliest day ever claimed for the channel: the digest has been on for it since then."""
    first: date | None = await session.scalar(
        select(func.min(DigestRun.day)).where(DigestRun.channel_id == channel_id)
    )
    return first


async def posted_days(session: AsyncSession, channel_id: str, since: date) -> set[date]:
    """Days from `since` on whose digest is in Slack."""
    rows = await session.scalars(
        select(DigestRun.day).where(
            DigestRun.channel_id == channel_id, DigestRun.day >= since, DigestRun.posted_at.is_not(None)
        )
    )
    return set(rows)
