"""Budget alerts as data: which thresholds a limit has crossed, and whether a person's spend spiked.

Posting them once is the job's (bot.jobs.alerts); the texts are plain mrkdwn with names filled in
by the caller, so the same alert reads the same from every replica.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import UsageRecord
from bot.usage.limits import LimitUse, Period, Scope, period_start, resets_at
from bot.usage.report import day_bounds, format_count

THRESHOLDS = (80, 95, 100)  # percent of a limit
SPIKE = 300  # the threshold column's value for a spike alert: 3x the 7-day daily average
SPIKE_FACTOR = 3
WEEK = 7


@dataclass(frozen=True)
class AlertDue:
    """An alert to post once: for `scope`/`subject_id`, this `period` starting `period_start`."""

    team_id: str
    scope: Scope
    subject_id: str
    period: Period
    period_start: date
    threshold: int
    text: str
    # Lower thresholds crossed at the same time: recorded as sent, folded into this one message.
    covers: tuple[int, ...] = ()


def crossed(use: LimitUse) -> list[int]:
    """The thresholds settled spend has reached (reservations are estimates and do not alert)."""
    percent = use.fraction * 100
    return [t for t in THRESHOLDS if percent >= t]


def threshold_alert(
    team_id: str, use: LimitUse, today: date, tz: ZoneInfo, name: Callable[[Scope, str], str]
) -> AlertDue | None:
    reached = crossed(use)
    if not reached:
        return None
    key, top = use.key, reached[-1]
    span = "daily" if key.period is Period.DAY else "monthly"
    what = {
        Scope.USER: f"{name(Scope.USER, key.subject_id)}'s {span} limit",
        Scope.CHANNEL: f"{name(Scope.CHANNEL, key.subject_id)}'s {span} limit",
        Scope.WORKSPACE: f"The workspace's {span} budget",
    }[key.scope]
    when = resets_at(key.period, today, tz)
    amounts = f"{format_count(use.spent)} of {format_count(use.limit)} credits"
    reset = f"resets {when:%H:%M} {when:%a} {when.day} {when:%b} ({tz.key})"
    if top >= 100:
        text = f":no_entry: {what} is used up: {amounts}. New requests are refused until it {reset}."
    else:
        text = f":warning: {what} is {top}% used: {amounts} ({reset})."
    return AlertDue(
        team_id,
        key.scope,
        key.subject_id,
        key.period,
        period_start(key.period, today),
        top,
        text,
        tuple(reached[:-1]),
    )


@dataclass(frozen=True)
class DailySpend:
    today: int
    week_total: int  # the 7 local days before today

    @property
    def week_average(self) -> float:
        return self.week_total / WEEK


def is_spike(spend: DailySpend, minimum: int) -> bool:
    return spend.today >= minimum and spend.today > SPIKE_FACTOR * spend.week_average


def spike_alert(team_id: str, user_id: str, spend: DailySpend, today: date, label: str) -> AlertDue:
    average = spend.week_average
    ratio = f"{spend.today / average:.1f}× " if average else ""
    text = (
        f":chart_with_upwards_trend: Spending spike: {label} has spent {format_count(spend.today)} credits "
        f"today, {ratio}their 7-day daily average ({format_count(round(average))})."
    )
    return AlertDue(team_id, Scope.USER, user_id, Period.DAY, today, SPIKE, text)


async def daily_spend(
    session: AsyncSession, user_id: str, tz: ZoneInfo, now: datetime | None = None
) -> DailySpend:
    """A person's credits today and in the 7 local days before, in one statement."""
    today = (now or datetime.now(UTC)).astimezone(tz).date()
    start, end = day_bounds(today, tz)
    week_start, _ = day_bounds(today - timedelta(days=WEEK), tz)
    in_today = UsageRecord.created_at >= start
    credits = func.coalesce(UsageRecord.credits_used, 0)
    row = (
        await session.execute(
            select(
                func.coalesce(func.sum(case((in_today, credits), else_=0)), 0),
                func.coalesce(func.sum(case((in_today, 0), else_=credits)), 0),
            ).where(
                UsageRecord.user_id == user_id,
                UsageRecord.created_at >= week_start,
                UsageRecord.created_at < end,
            )
        )
    ).one()
    return DailySpend(int(row[0] or 0), int(row[1] or 0))


def names_from(users: Mapping[str, str]) -> Callable[[Scope, str], str]:
    """Readable subjects without pinging anyone: a person's display name, a channel's link."""

    def name(scope: Scope, subject_id: str) -> str:
        if scope is Scope.CHANNEL:
            return f"<#{subject_id}>"
        shown = users.get(subject_id) or subject_id
        return shown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    return name
