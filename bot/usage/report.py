"""The daily digest as data: one local calendar day's usage and how it compares with the days before."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.feedback import FeedbackCounts, feedback_counts
from bot.usage import queries
from bot.usage.queries import CREDITS_PER_USD, UsageShare, UsageTotals

if TYPE_CHECKING:  # bot.usage.budgets builds on this module's day_bounds
    from bot.usage.budgets import BudgetReport

WEEK = 7


def day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The UTC instants [start, end) of local calendar `day`: 23 or 25 hours long on DST change days.

    Local midnight is built with the zone attached and then converted, so the offset of that very
    midnight is used (never the offset of some other moment of the day).
    """
    start = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    return start, end


def relative_change(current: float, base: float) -> float | None:
    """(current - base) / base, e.g. 0.25 for +25 %; None when there is no base to compare with."""
    if base == 0:
        return None
    return (current - base) / base


@dataclass(frozen=True)
class Change:
    """A figure against the day before and against the average of the 7 days before; None is n/a."""

    vs_previous_day: float | None
    vs_week_average: float | None

    @classmethod
    def of(cls, current: float, previous_day: float, week_total: float) -> Change:
        return cls(relative_change(current, previous_day), relative_change(current, week_total / WEEK))


@dataclass(frozen=True)
class DigestReport:
    day: date
    zone: str
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    totals: UsageTotals
    top_users: tuple[UsageShare, ...]
    top_channels: tuple[UsageShare, ...]
    models: tuple[UsageShare, ...]
    credits_change: Change
    requests_change: Change
    # Votes on the day's answers (as they stand when the report is built).
    feedback: FeedbackCounts = field(default_factory=FeedbackCounts)
    # The account balance is filled in by the job when a balance source is configured.
    balance_checked: bool = False
    balance_usd: float | None = None
    # Filled in by the job when limits are configured: each budget's use, entities over 80 %.
    budgets: BudgetReport | None = None

    @property
    def empty(self) -> bool:
        return self.totals.requests == 0

    @property
    def rated_share(self) -> float | None:
        """Of the day's answers (succeeded requests), the share with at least one vote."""
        if not self.totals.succeeded:
            return None
        return min(1.0, self.feedback.rated_answers / self.totals.succeeded)

    @property
    def hours(self) -> int:
        return round((self.end - self.start).total_seconds() / 3600)


async def build_report(session: AsyncSession, day: date, tz: ZoneInfo) -> DigestReport:
    start, end = day_bounds(day, tz)
    previous_start, _ = day_bounds(day - timedelta(days=1), tz)
    week_start, _ = day_bounds(day - timedelta(days=WEEK), tz)

    current = await queries.totals(session, start, end)
    previous = await queries.totals(session, previous_start, start)
    week = await queries.totals(session, week_start, start)
    if current.requests:
        users = await queries.top_users(session, start, end)
        channels = await queries.top_channels(session, start, end)
        models = await queries.per_model(session, start, end)
        feedback = await feedback_counts(session, start, end)
    else:
        users = channels = models = ()
        feedback = FeedbackCounts()
    return DigestReport(
        day=day,
        zone=tz.key,
        start=start,
        end=end,
        totals=current,
        top_users=users,
        top_channels=channels,
        models=models,
        credits_change=Change.of(current.credits, previous.credits, week.credits),
        requests_change=Change.of(current.requests, previous.requests, week.requests),
        feedback=feedback,
    )


# Numbers for people, shared by the Slack blocks and the terminal table.


def format_count(value: int) -> str:
    return f"{value:,}"


def format_usd(amount: float) -> str:
    """Dollars with cents, or with as many decimals as a small non-zero amount needs (2 significant)."""
    if amount == 0:
        return "$0.00"
    if abs(amount) >= 0.01:
        return f"${amount:,.2f}"
    decimals = 3
    while abs(amount) < 10 ** (1 - decimals) and decimals < 12:
        decimals += 1
    return f"${amount:.{decimals}f}"


def format_credits(credits: int) -> str:
    """e.g. "11,136 credits ($0.0056)"."""
    return f"{format_count(credits)} credits ({format_usd(credits / CREDITS_PER_USD)})"


def format_change(change: float | None) -> str:
    """+25%, -3.5%, 0%; "n/a" when there was nothing to compare with."""
    if change is None:
        return "n/a"
    percent = change * 100
    if round(percent, 1) == 0:
        return "0%"
    if abs(percent) < 10:
        return f"{percent:+.1f}%"
    return f"{percent:+,.0f}%"


def format_day(day: date) -> str:
    return f"{day:%A}, {day.day} {day:%B %Y}"
