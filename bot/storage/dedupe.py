"""Database-backed event dedupe: one reply per person message across retries, twins and replicas."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.db import dialect_name
from bot.storage.models import Base, ProcessedEvent, utcnow

_TABLE = Base.metadata.tables["processed_events"]  # typed as a Table (a model's __table__ is not)
# Built once (a Core insert, executed with its values): building it per event cost more CPU than
# running it (py-spy, bench (d)).
_CLAIM = {
    name: insert(_TABLE).on_conflict_do_nothing().returning(_TABLE.c.id)
    for name, insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}


async def claim_event(session: AsyncSession, event_id: str, channel_id: str, message_ts: str) -> bool:
    """Record the event; False when it (or its app_mention/message twin) was already claimed.

    One statement, the admission's hot path: the row goes in unless either unique key (the event id,
    or the channel and message) is taken, and a lost race is the same "already claimed" as an earlier
    claim, with the caller's transaction still usable.
    """
    dialect = dialect_name(session)
    params = {
        "event_id": event_id,
        "channel_id": channel_id,
        "message_ts": message_ts,
        "received_at": utcnow(),
    }
    return (await session.execute(_CLAIM.get(dialect, _CLAIM["sqlite"]), params)).first() is not None


async def release_event(session: AsyncSession, event_id: str) -> None:
    """Forget a claimed event that could not be answered, so Slack's retry is answered instead."""
    await session.execute(delete(ProcessedEvent).where(ProcessedEvent.event_id == event_id))


async def purge_events(session: AsyncSession, older_than: timedelta) -> int:
    """Delete dedupe rows past Slack's retry window; returns how many went."""
    result = await session.execute(
        delete(ProcessedEvent).where(ProcessedEvent.received_at < utcnow() - older_than)
    )
    return int(getattr(result, "rowcount", 0) or 0)
