"""Writing the usage ledger: one row per upstream completion. Functions take a session, never commit."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.db import dialect_name
from bot.storage.models import UsageRecord, utcnow

# The status of a row recovery writes for a reply whose process died: nothing else is known.
RECOVERED_STATUS = "interrupted"


@dataclass(frozen=True)
class UsageEntry:
    """What one upstream call cost and how it went; None means unknown, never zero."""

    team_id: str | None
    channel_id: str | None
    user_id: str | None
    conversation_id: int | None
    model_requested: str
    model_returned: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    credits_used: int | None
    usd_spent: float | None
    finish_reason: str | None
    status: str
    ttft_ms: int | None
    duration_ms: int | None
    client_request_id: str | None
    inference_id: str | None
    # The tokens are our estimate, not the model's count (a stopped stream sends no usage).
    tokens_estimated: bool = False


async def record_usage(session: AsyncSession, entry: UsageEntry) -> UsageRecord:
    record = UsageRecord(**entry.__dict__, created_at=utcnow())
    session.add(record)
    await session.flush()
    return record


async def store_usage(session: AsyncSession, entry: UsageEntry, created_at: datetime | None = None) -> None:
    """Write the completion's row; the same request id again replaces it (spool replays, recovery).

    The caller's entry is what the upstream call reported, so it wins over a row recovery wrote
    from what it could guess; writing the same entry twice leaves one row.
    """
    if entry.client_request_id is None:
        await record_usage(session, entry)
        return
    values = {**asdict(entry), "created_at": created_at or utcnow()}
    await session.execute(_upsert(dialect_name(session)), values)


# Every field but the key and the row's first time.
_REPLACED = tuple(f.name for f in fields(UsageEntry) if f.name != "client_request_id")


@functools.cache
def _upsert(dialect: str) -> PgInsert | SqliteInsert:
    """store_usage's statement, built once per dialect on the table (Core): its values come with each
    execution. Built per row, with the values inline and the `excluded` alias made anew each time,
    it was 9 % of the bot's event-loop CPU in bench (d) (py-spy)."""
    table = UsageRecord.metadata.tables[UsageRecord.__tablename__]
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(table)
    changed = {name: stmt.excluded[name] for name in _REPLACED}
    return stmt.on_conflict_do_update(index_elements=["client_request_id"], set_=changed)


async def record_if_absent(session: AsyncSession, entry: UsageEntry) -> bool:
    """Write the row unless one with its request id exists; True when it was written."""
    stmt = _insert(session, {**asdict(entry), "created_at": utcnow()})
    result = await session.execute(stmt.on_conflict_do_nothing(index_elements=["client_request_id"]))
    return int(getattr(result, "rowcount", 0) or 0) == 1


def _insert(session: AsyncSession, values: dict[str, Any]) -> PgInsert | SqliteInsert:
    if dialect_name(session) == "postgresql":
        return pg_insert(UsageRecord).values(**values)
    return sqlite_insert(UsageRecord).values(**values)
