"""SQL aggregates over the usage ledger for a [start, end) window of UTC instants.

Every function is one query with the grouping and sums done by the database; no ledger rows are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from bot.storage.models import UsageRecord

CREDITS_PER_USD = 2_000_000
# A completion a person stopped ("stopped") answered as far as they wanted: not a failure.
SUCCESS_STATUSES = ("complete", "stopped")
TOP_N = 5


@dataclass(frozen=True)
class TokenCounts:
    prompt: int = 0
    completion: int = 0
    cached: int = 0  # part of prompt
    reasoning: int = 0  # part of completion

    @property
    def total(self) -> int:
        return self.prompt + self.completion


@dataclass(frozen=True)
class UsageTotals:
    """Sums for a window; `credits` counts only calls whose cost is known (see `unknown_cost`)."""

    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    tokens: TokenCounts = TokenCounts()
    credits: int = 0
    unknown_cost: int = 0

    @property
    def usd(self) -> float:
        return self.credits / CREDITS_PER_USD


@dataclass(frozen=True)
class UsageShare:
    """One row of a breakdown: a user, a channel or a model, and what it used."""

    key: str
    requests: int
    credits: int
    tokens: int

    @property
    def usd(self) -> float:
        return self.credits / CREDITS_PER_USD


def _as_utc(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise ValueError("usage windows need time-zone aware datetimes")
    return instant.astimezone(UTC)


def in_window(start: datetime, end: datetime) -> ColumnElement[bool]:
    """created_at in [start, end); bounds are converted to UTC, the zone every row is stored in."""
    return (UsageRecord.created_at >= _as_utc(start)) & (UsageRecord.created_at < _as_utc(end))


def _int(value: Any) -> int:
    # PostgreSQL returns SUM(bigint) as NUMERIC (Decimal); SUM over no rows is NULL.
    return int(value or 0)


def _sum(column: InstrumentedAttribute[int | None]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(column), 0)


async def totals(session: AsyncSession, start: datetime, end: datetime) -> UsageTotals:
    succeeded = case((UsageRecord.status.in_(SUCCESS_STATUSES), 1), else_=0)
    unknown = case((UsageRecord.credits_used.is_(None), 1), else_=0)
    row = (
        await session.execute(
            select(
                func.count(UsageRecord.id),
                func.coalesce(func.sum(succeeded), 0),
                _sum(UsageRecord.prompt_tokens),
                _sum(UsageRecord.completion_tokens),
                _sum(UsageRecord.cached_tokens),
                _sum(UsageRecord.reasoning_tokens),
                _sum(UsageRecord.credits_used),
                func.coalesce(func.sum(unknown), 0),
            ).where(in_window(start, end))
        )
    ).one()
    requests, ok, prompt, completion, cached, reasoning, credits, unknown_cost = (_int(v) for v in row)
    return UsageTotals(
        requests=requests,
        succeeded=ok,
        failed=requests - ok,
        tokens=TokenCounts(prompt=prompt, completion=completion, cached=cached, reasoning=reasoning),
        credits=credits,
        unknown_cost=unknown_cost,
    )


async def _breakdown(
    session: AsyncSession,
    key: InstrumentedAttribute[Any],
    start: datetime,
    end: datetime,
    limit: int,
) -> tuple[UsageShare, ...]:
    requests = func.count(UsageRecord.id)
    credits = _sum(UsageRecord.credits_used)
    tokens = _sum(UsageRecord.prompt_tokens) + _sum(UsageRecord.completion_tokens)
    rows = await session.execute(
        select(key, requests, credits, tokens)
        .where(in_window(start, end), key.is_not(None))
        .group_by(key)
        # Ties broken by key so the digest is the same on every replica and database.
        .order_by(credits.desc(), requests.desc(), key)
        .limit(limit)
    )
    return tuple(
        UsageShare(key=str(name), requests=_int(n), credits=_int(c), tokens=_int(t)) for name, n, c, t in rows
    )


async def top_users(
    session: AsyncSession, start: datetime, end: datetime, limit: int = TOP_N
) -> tuple[UsageShare, ...]:
    """The biggest spenders by known credits, then by number of requests."""
    return await _breakdown(session, UsageRecord.user_id, start, end, limit)


async def top_channels(
    session: AsyncSession, start: datetime, end: datetime, limit: int = TOP_N
) -> tuple[UsageShare, ...]:
    return await _breakdown(session, UsageRecord.channel_id, start, end, limit)


async def per_model(
    session: AsyncSession, start: datetime, end: datetime, limit: int = 10
) -> tuple[UsageShare, ...]:
    """Grouped by the model id the bot requested (never NULL, unlike the one the API reports back)."""
    return await _breakdown(session, UsageRecord.model_requested, start, end, limit)
