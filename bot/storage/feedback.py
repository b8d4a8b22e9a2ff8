"""Feedback votes on answers: one per person per answer, replaced when the person presses again."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import case, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.db import dialect_name
from bot.storage.models import FeedbackVote, utcnow


class Vote(enum.StrEnum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class VoteCast:
    """A press of an answer's feedback buttons, as Slack reported it."""

    team_id: str | None
    channel_id: str
    message_ts: str  # the answer message carrying the buttons
    user_id: str
    value: Vote


@dataclass(frozen=True)
class FeedbackCounts:
    up: int = 0
    down: int = 0
    rated_answers: int = 0  # answers with at least one vote


def answered_at(message_ts: str) -> datetime:
    """A Slack ts is the Unix time the message was posted. Raises ValueError for anything else."""
    return datetime.fromtimestamp(float(message_ts), UTC)


async def record_vote(session: AsyncSession, vote: VoteCast) -> None:
    """Store the vote; the same person on the same answer replaces their earlier one (race-safe)."""
    now = utcnow()
    insert = pg_insert if dialect_name(session) == "postgresql" else sqlite_insert
    stmt = insert(FeedbackVote).values(
        team_id=vote.team_id,
        channel_id=vote.channel_id,
        message_ts=vote.message_ts,
        user_id=vote.user_id,
        value=vote.value.value,
        answered_at=answered_at(vote.message_ts),
        created_at=now,
        updated_at=now,
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["channel_id", "message_ts", "user_id"],
            set_={"value": stmt.excluded.value, "team_id": stmt.excluded.team_id, "updated_at": now},
        )
    )


async def find_vote(session: AsyncSession, channel_id: str, message_ts: str, user_id: str) -> Vote | None:
    value = await session.scalar(
        select(FeedbackVote.value).where(
            FeedbackVote.channel_id == channel_id,
            FeedbackVote.message_ts == message_ts,
            FeedbackVote.user_id == user_id,
        )
    )
    return None if value is None else Vote(value)


async def feedback_counts(session: AsyncSession, start: datetime, end: datetime) -> FeedbackCounts:
    """Current votes on the answers posted in [start, end) (UTC instants)."""
    window = (FeedbackVote.answered_at >= start.astimezone(UTC)) & (
        FeedbackVote.answered_at < end.astimezone(UTC)
    )
    up = func.coalesce(func.sum(case((FeedbackVote.value == Vote.UP.value, 1), else_=0)), 0)
    down = func.coalesce(func.sum(case((FeedbackVote.value == Vote.DOWN.value, 1), else_=0)), 0)
    ups, downs = (await session.execute(select(up, down).where(window))).one()
    answers = select(FeedbackVote.channel_id, FeedbackVote.message_ts).where(window).distinct().subquery()
    rated = await session.scalar(select(func.count()).select_from(answers))
    return FeedbackCounts(up=int(ups or 0), down=int(downs or 0), rated_answers=int(rated or 0))
