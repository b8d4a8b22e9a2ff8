"""Writing the usage ledger: one row per upstream completion. Functions take a session, never commit."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import UsageRecord, utcnow


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


async def record_usage(session: AsyncSession, entry: UsageEntry) -> UsageRecord:
    record = UsageRecord(**entry.__dict__, created_at=utcnow())
    session.add(record)
    await session.flush()
    return record
