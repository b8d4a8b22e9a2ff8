"""The digest's budget section as data: each workspace budget's use, and every entity over 80 %.

Counted as of the end of the digest's day: a day limit over that day, a month limit over the month up
to and including it, so the section reads the same whenever the digest is posted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage import quotas as store
from bot.storage.models import QuotaOverride
from bot.usage.limits import (
    SCOPE_COLUMN,
    DefaultLimits,
    LimitKey,
    LimitUse,
    Override,
    Period,
    Scope,
    limit_for,
    period_start,
)
from bot.usage.report import day_bounds

WATCH_FRACTION = 0.8  # entities at or over this share of a limit are listed


@dataclass(frozen=True)
class BudgetReport:
    workspace: tuple[LimitUse, ...]  # each workspace's monthly budget, month to date
    over: tuple[LimitUse, ...]  # people and channels at or over 80 % of a limit, fullest first

    @property
    def empty(self) -> bool:
        return not self.workspace and not self.over


async def budget_report(
    session: AsyncSession, day: date, tz: ZoneInfo, defaults: DefaultLimits
) -> BudgetReport:
    overrides = await _all_overrides(session)
    _, end = day_bounds(day, tz)
    uses: list[LimitUse] = []
    workspace: list[LimitUse] = []
    for scope, period in ((Scope.USER, Period.DAY), (Scope.USER, Period.MONTH), (Scope.CHANNEL, Period.DAY)):
        start, _ = day_bounds(period_start(period, day), tz)
        for team, subject, spent in await store.spenders(session, SCOPE_COLUMN[scope], start, end):
            key = LimitKey(scope, subject, period)
            limit = limit_for(key, defaults, overrides.get(team, []))
            if limit is not None:
                uses.append(LimitUse(key, limit, spent))
    month_start, _ = day_bounds(period_start(Period.MONTH, day), tz)
    spent_by_team = {
        team: spent for team, _, spent in await store.spenders(session, "team_id", month_start, end)
    }
    for team in sorted(set(spent_by_team) | set(overrides)):
        key = LimitKey(Scope.WORKSPACE, team, Period.MONTH)
        limit = limit_for(key, defaults, overrides.get(team, []))
        if limit is not None:
            workspace.append(LimitUse(key, limit, spent_by_team.get(team, 0)))
    over = sorted(
        (use for use in uses if use.fraction >= WATCH_FRACTION),
        key=lambda use: (-use.fraction, use.key.scope, use.key.subject_id, use.key.period),
    )
    return BudgetReport(tuple(workspace), tuple(over))


async def _all_overrides(session: AsyncSession) -> dict[str, list[Override]]:
    rows = await session.execute(
        select(
            QuotaOverride.team_id,
            QuotaOverride.scope,
            QuotaOverride.subject_id,
            QuotaOverride.period,
            QuotaOverride.credits,
        )
    )
    found: dict[str, list[Override]] = {}
    for team, scope, subject, period, credits in rows:
        found.setdefault(team, []).append(Override(Scope(scope), subject, Period(period), credits))
    return found
