"""One person's own usage for `/usage`: today, the last 7 days and this month, in one query."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import UsageRecord
from bot.usage.limits import LimitUse, Period, Scope, local_today, resets_at
from bot.usage.queries import CREDITS_PER_USD, in_window
from bot.usage.report import day_bounds


@dataclass(frozen=True)
class PersonalWindow:
    label: str
    first_day: date  # local, inclusive; every window ends with today
    requests: int
    prompt_tokens: int
    completion_tokens: int
    credits: int  # known cost only
    unknown_cost: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def usd(self) -> float:
        return self.credits / CREDITS_PER_USD


@dataclass(frozen=True)
class QuotaLeft:
    """One of the person's own limits: what is left of it now (calls in flight count as spent)."""

    period: Period
    limit: int
    used: int
    resets_at: datetime  # local, in USAGE_DIGEST_TZ

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(frozen=True)
class PersonalUsage:
    user_id: str
    zone: str
    today: date
    windows: tuple[PersonalWindow, ...]  # today, last 7 days, this month
    quotas: tuple[QuotaLeft, ...] = ()  # the person's daily and monthly limits, when they have any

    @property
    def empty(self) -> bool:
        return all(window.requests == 0 for window in self.windows)


def _windows(today: date) -> tuple[tuple[str, date], ...]:
    return (
        ("Today", today),
        ("Last 7 days", today - timedelta(days=6)),
        ("This month", today.replace(day=1)),
    )


async def personal_usage(
    session: AsyncSession, user_id: str, tz: ZoneInfo, now: datetime | None = None
) -> PersonalUsage:
    today = (now or datetime.now(UTC)).astimezone(tz).date()
    windows = _windows(today)
    _, end = day_bounds(today, tz)
    earliest, _ = day_bounds(min(first for _, first in windows), tz)

    columns: list[ColumnElement[Any]] = []
    for _, first in windows:
        inside = in_window(day_bounds(first, tz)[0], end)
        columns += [
            func.coalesce(func.sum(case((inside, 1), else_=0)), 0),
            func.coalesce(func.sum(case((inside, UsageRecord.prompt_tokens), else_=0)), 0),
            func.coalesce(func.sum(case((inside, UsageRecord.completion_tokens), else_=0)), 0),
            func.coalesce(func.sum(case((inside, UsageRecord.credits_used), else_=0)), 0),
            func.coalesce(func.sum(case((inside & UsageRecord.credits_used.is_(None), 1), else_=0)), 0),
        ]
    row = (
        await session.execute(
            select(*columns).where(UsageRecord.user_id == user_id, in_window(earliest, end))
        )
    ).one()
    values = [int(v or 0) for v in row]
    return PersonalUsage(
        user_id=user_id,
        zone=tz.key,
        today=today,
        windows=tuple(
            PersonalWindow(label, first, *values[i * 5 : i * 5 + 5])
            for i, (label, first) in enumerate(windows)
        ),
    )


def quotas_left(uses: list[LimitUse], tz: ZoneInfo, now: datetime | None = None) -> tuple[QuotaLeft, ...]:
    """The person's own limits among `uses` (a channel's or the workspace's are not theirs), day first."""
    today = local_today(tz, now)
    mine = sorted(
        (use for use in uses if use.key.scope is Scope.USER), key=lambda use: use.key.period != Period.DAY
    )
    return tuple(
        QuotaLeft(use.key.period, use.limit, use.used, resets_at(use.key.period, today, tz)) for use in mine
    )
