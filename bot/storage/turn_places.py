"""Repository for turn places (bot.storage.models.TurnPlace), PostgreSQL only: the line of turns of
each conversation across replicas. Functions take a session and never commit."""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import Conversation, TurnPlace

# Signalled (payload: the conversation id) when a turn leaves its line.
TURN_ENDED = "bot_turn_ended"

_LEAVE = text(
    # One statement. Signalled whether or not a later place is visible to this statement: a claim
    # committing at the same moment may have seen this place still live and wait for the signal.
    "WITH gone AS (DELETE FROM turn_places WHERE id = :id RETURNING conversation_id) "
    "SELECT pg_notify(:channel, CAST(gone.conversation_id AS text)) FROM gone"
).bindparams(bindparam("id"), bindparam("channel", TURN_ENDED))


async def take_place(
    session: AsyncSession, conversation_id: int, holder: str, lease: timedelta
) -> tuple[int, bool]:
    """Append a place to the conversation's line; returns its id and whether it is first (no live
    place before it). The caller holds the conversation's row lock, so every earlier place of the
    line is committed and visible, and ids follow admission order."""
    ahead = (
        select(func.count())
        .select_from(TurnPlace)
        .where(TurnPlace.conversation_id == conversation_id, TurnPlace.expires_at > func.now())
        .scalar_subquery()
    )
    stmt = (
        insert(TurnPlace)
        .values(conversation_id=conversation_id, holder=holder, expires_at=func.now() + lease)
        .returning(TurnPlace.id, ahead)
    )
    row = (await session.execute(stmt)).one()
    return int(row[0]), int(row[1]) == 0


async def blocked_for(session: AsyncSession, conversation_id: int, place_id: int) -> float | None:
    """Seconds until every live place before `place_id` has expired at the latest, by the database's
    clock (replicas' clocks may differ); None when there is none: the turn is next."""
    stmt = select(func.max(TurnPlace.expires_at), func.now()).where(
        TurnPlace.conversation_id == conversation_id,
        TurnPlace.id < place_id,
        TurnPlace.expires_at > func.now(),
    )
    row: Any = (await session.execute(stmt)).one()
    latest, now = row[0], row[1]
    if latest is None:
        return None
    return max(0.0, float((latest - now).total_seconds()))


async def leave_place(session: AsyncSession, place_id: int) -> None:
    """Delete the place and signal TURN_ENDED on commit (nothing when it was gone already)."""
    await session.execute(_LEAVE, {"id": place_id})


async def renew_places(
    session: AsyncSession, holder: str, place_ids: Collection[int], lease: timedelta
) -> None:
    """Extend the lease of the places this replica holds (one statement for all of them)."""
    if place_ids:
        await session.execute(
            update(TurnPlace)
            .where(TurnPlace.holder == holder, TurnPlace.id.in_(list(place_ids)))
            .values(expires_at=func.now() + lease)
        )


async def purge_dead_places(session: AsyncSession, older_than: timedelta) -> int:
    """Delete places whose lease ran out long ago (their replica died); they already block nobody."""
    result = await session.execute(delete(TurnPlace).where(TurnPlace.expires_at < func.now() - older_than))
    return int(getattr(result, "rowcount", 0) or 0)


async def thread_has_live_turn(session: AsyncSession, team_id: str, channel_id: str, thread_ts: str) -> bool:
    """Some replica is answering (or about to answer) in this thread now."""
    stmt = (
        select(TurnPlace.id)
        .join(Conversation, Conversation.id == TurnPlace.conversation_id)
        .where(
            Conversation.team_id == team_id,
            Conversation.channel_id == channel_id,
            Conversation.thread_ts == thread_ts,
            TurnPlace.expires_at > func.now(),
        )
        .limit(1)
    )
    return (await session.execute(stmt)).first() is not None
