"""The quotas as the App Home shows them: a person's remaining credits, the budget, open alerts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.quota import Quotas
from bot.storage.models import QuotaAlert
from bot.usage.home import Allowance, OpenAlert
from bot.usage.limits import LimitUse, Period, Scope, Subject, local_today, period_start, resets_at

_LABELS = {
    (Scope.USER, Period.DAY): "Your daily quota",
    (Scope.USER, Period.MONTH): "Your monthly quota",
    (Scope.WORKSPACE, Period.DAY): "Workspace budget today",
    (Scope.WORKSPACE, Period.MONTH): "Workspace budget this month",
}


class QuotaAllowances:
    """bot.usage.home.Allowances over the process's quotas (calls in flight count as used)."""

    def __init__(self, quotas: Quotas) -> None:
        self._quotas = quotas

    async def for_person(self, team_id: str, user_id: str) -> Sequence[Allowance]:
        uses = await self._quotas.uses(Subject(team_id, None, user_id))
        return self._allowances([use for use in uses if use.key.scope is Scope.USER])

    async def for_workspace(self, team_id: str) -> Sequence[Allowance]:
        return self._allowances(await self._quotas.uses(Subject(team_id, None, None)))

    def _allowances(self, uses: list[LimitUse]) -> list[Allowance]:
        tz = self._quotas.tz
        today = local_today(tz)
        found = []
        for use in sorted(uses, key=lambda u: u.key.period != Period.DAY):
            when = resets_at(use.key.period, today, tz)
            label = _LABELS.get((use.key.scope, use.key.period), "Limit")
            resets = f"{when:%a} {when.day} {when:%b} 00:00 {tz.key}"
            found.append(Allowance(label, use.limit, use.used, resets))
        return found


class SentAlerts:
    """bot.usage.home.AlertFeed: the budget alerts of the current periods, newest first."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], tz: ZoneInfo, limit: int = 10) -> None:
        self._sessions, self._tz, self._limit = sessions, tz, limit

    async def open_alerts(self, team_id: str) -> Sequence[OpenAlert]:
        today = local_today(self._tz)
        async with self._sessions() as session:
            rows = await session.scalars(
                select(QuotaAlert)
                .where(
                    QuotaAlert.team_id == team_id,
                    QuotaAlert.period_start >= period_start(Period.MONTH, today),
                )
                .order_by(QuotaAlert.claimed_at.desc(), QuotaAlert.id.desc())
            )
            alerts = [row for row in rows if _still_open(row, today)]
        seen: set[str] = set()
        shown = []
        for row in alerts:
            if row.text in seen:  # lower thresholds folded into one message share its text
                continue
            seen.add(row.text)
            shown.append(OpenAlert(row.text, row.posted_at or row.claimed_at or datetime.now(UTC)))
        return shown[: self._limit]


def _still_open(row: QuotaAlert, today: date) -> bool:
    """A day's alert is over when the day is; a month's when the month is."""
    return row.period == Period.MONTH.value or row.period_start == today
