"""What the App Home shows, as data: a person's own usage and allowances; for admins also the
workspace's month (totals, by channel, by person), its budget and the open alerts.

Remaining credits and alerts are computed elsewhere (quotas and budgets): they reach the page through
the `Allowances` and `AlertFeed` seams, and the page leaves their sections out when none is wired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from bot.usage.queries import UsageShare, UsageTotals, top_channels, top_users, totals
from bot.usage.report import day_bounds

TOP_N = 10


@dataclass(frozen=True)
class Allowance:
    """One limit and how much of it is used, in credits (a daily quota, a monthly budget, ...)."""

    label: str  # e.g. "Your daily quota", "Workspace budget this month"
    limit: int
    used: int
    resets: str | None = None  # when it starts again, as people read it ("tomorrow 00:00 UTC")

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)

    @property
    def share(self) -> float:
        return self.used / self.limit if self.limit > 0 else 1.0


class Allowances(Protocol):
    """Remaining credits, from the quotas and budgets (wired by the composition root)."""

    async def for_person(self, team_id: str, user_id: str) -> Sequence[Allowance]: ...

    async def for_workspace(self, team_id: str) -> Sequence[Allowance]: ...


@dataclass(frozen=True)
class OpenAlert:
    text: str  # one line, e.g. "<@U1> passed 95 % of their daily quota"
    raised_at: datetime


class AlertFeed(Protocol):
    """Budget alerts not yet over (their period has not ended), newest first."""

    async def open_alerts(self, team_id: str) -> Sequence[OpenAlert]: ...


@dataclass(frozen=True)
class WorkspaceMonth:
    first_day: date
    today: date
    zone: str
    totals: UsageTotals
    by_channel: tuple[UsageShare, ...]
    by_person: tuple[UsageShare, ...]


async def workspace_month(
    session: AsyncSession, tz: ZoneInfo, now: datetime | None = None, limit: int = TOP_N
) -> WorkspaceMonth:
    """This month so far in `tz` (to the end of today): totals and the biggest channels and people."""
    today = (now or datetime.now(UTC)).astimezone(tz).date()
    first = today.replace(day=1)
    start, _ = day_bounds(first, tz)
    _, end = day_bounds(today, tz)
    return WorkspaceMonth(
        first_day=first,
        today=today,
        zone=tz.key,
        totals=await totals(session, start, end),
        by_channel=await top_channels(session, start, end, limit),
        by_person=await top_users(session, start, end, limit),
    )
