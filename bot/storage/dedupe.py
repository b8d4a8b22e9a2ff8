"""Database-backed event dedupe: one reply per person message across retries, twins and replicas."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import ProcessedEvent, utcnow


async def claim_event(session: AsyncSession, event_id: str, channel_id: str, message_ts: str) -> bool:
    """Record the event; False when it (or its app_mention/message twin) was already claimed.

    Uses a savepoint so a lost race leaves the caller's transaction usable.
    """
    duplicate = await session.execute(
        select(ProcessedEvent.id).where(
            (ProcessedEvent.event_id == event_id)
            | ((ProcessedEvent.channel_id == channel_id) & (ProcessedEvent.message_ts == message_ts))
        )
    )
    if duplicate.first() is not None:
        return False
    try:
        async with session.begin_nested():
            session.add(
                ProcessedEvent(
                    event_id=event_id, channel_id=channel_id, message_ts=message_ts, received_at=utcnow()
                )
            )
    except IntegrityError:
        return False
    return True


async def release_event(session: AsyncSession, event_id: str) -> None:
    """Forget a claimed event that could not be answered, so Slack's retry is answered instead."""
    await session.execute(delete(ProcessedEvent).where(ProcessedEvent.event_id == event_id))


async def purge_events(session: AsyncSession, older_than: timedelta) -> int:
    """Delete dedupe rows past Slack's retry window; returns how many went."""
    result = await session.execute(
        delete(ProcessedEvent).where(ProcessedEvent.received_at < utcnow() - older_than)
    )
    return int(getattr(result, "rowcount", 0) or 0)
