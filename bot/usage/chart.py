"""The usage chart: 14 days of credits per day, stacked by the top channels, with the budget's pace.

`chart_data` reads the ledger in one statement; `render_png` draws with matplotlib's Agg canvas (no
pyplot, no display, safe in a worker thread) and is CPU work: call it through `asyncio.to_thread`.
`chart_png` does both for the App Home and the digest.
"""

from __future__ import annotations

import asyncio
import calendar
import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.storage.models import UsageRecord
from bot.usage.report import day_bounds

DAYS = 14
CHART_TITLE = "Credits per day, last 14 days"  # the uploaded file's title, in the digest and the Home tab
CHART_ALT = "Bar chart of credits spent per day over the last 14 days, stacked by channel"
TOP_CHANNELS = 5
OTHER = "other"


@dataclass(frozen=True)
class ChartData:
    days: tuple[date, ...]  # oldest first, ending with the chart's last day
    series: tuple[tuple[str, tuple[int, ...]], ...]  # (channel id or OTHER, credits per day), biggest first
    daily_pace: float | None  # the workspace's monthly budget spread over the month's days

    @property
    def empty(self) -> bool:
        return all(not any(values) for _, values in self.series)


async def chart_data(
    session: AsyncSession,
    last_day: date,
    tz: ZoneInfo,
    *,
    team_id: str | None = None,
    monthly_budget: int | None = None,
    days: int = DAYS,
    top: int = TOP_CHANNELS,
) -> ChartData:
    """Credits per local day for the `days` days ending `last_day`, per channel (the top ones by total)."""
    span = tuple(last_day - timedelta(days=n) for n in range(days - 1, -1, -1))
    bounds = [day_bounds(day, tz) for day in span]
    credits = func.coalesce(UsageRecord.credits_used, 0)
    columns: list[ColumnElement[Any]] = [
        func.coalesce(
            func.sum(case(((UsageRecord.created_at >= s) & (UsageRecord.created_at < e), credits), else_=0)),
            0,
        )
        for s, e in bounds
    ]
    query = (
        select(UsageRecord.channel_id, *columns)
        .where(UsageRecord.created_at >= bounds[0][0], UsageRecord.created_at < bounds[-1][1])
        .group_by(UsageRecord.channel_id)
    )
    if team_id is not None:
        query = query.where(UsageRecord.team_id == team_id)
    rows = [
        (str(row[0] or OTHER), tuple(int(v or 0) for v in row[1:])) for row in await session.execute(query)
    ]
    rows.sort(key=lambda row: (-sum(row[1]), row[0]))
    kept, rest = rows[:top], rows[top:]
    if rest:
        kept.append((OTHER, tuple(sum(values) for values in zip(*(r[1] for r in rest), strict=True))))
    pace = None
    if monthly_budget is not None:
        pace = monthly_budget / calendar.monthrange(last_day.year, last_day.month)[1]
    return ChartData(span, tuple(kept), pace)


def render_png(data: ChartData, labels: Mapping[str, str] | None = None) -> bytes:
    """The chart as PNG bytes. CPU-bound and thread-safe (no pyplot state): run it off the event loop."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: ~0.3 s, only when drawn
    from matplotlib.figure import Figure

    names = {key: _label(key) for key, _ in data.series} | dict(labels or {})
    figure = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = list(range(len(data.days)))
    bottom = [0] * len(data.days)
    for key, values in data.series:
        axes.bar(positions, values, bottom=bottom, label=names.get(key, key), width=0.8)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    if data.daily_pace is not None:
        axes.axhline(
            data.daily_pace, color="black", linestyle="--", linewidth=1.2, label="budget pace per day"
        )
    axes.set_xticks(positions, [f"{day:%d %b}" for day in data.days], rotation=45, ha="right", fontsize=8)
    axes.set_ylabel("credits")
    axes.set_title(f"Credits per day, {data.days[0]:%d %b} to {data.days[-1]:%d %b}")
    axes.yaxis.set_major_formatter(lambda value, _: f"{value:,.0f}")
    if data.series or data.daily_pace is not None:
        axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _label(key: str) -> str:
    if key == "terminal":
        return "Terminal chat"
    return "direct messages" if key.startswith("D") else key


async def chart_png(
    sessions: async_sessionmaker[AsyncSession],
    last_day: date,
    tz: ZoneInfo,
    *,
    team_id: str | None = None,
    monthly_budget: int | None = None,
    labels: Mapping[str, str] | None = None,
) -> bytes:
    """The chart for the App Home (admins) and the digest: read, then drawn in a worker thread."""
    async with sessions() as session:
        data = await chart_data(session, last_day, tz, team_id=team_id, monthly_budget=monthly_budget)
    return await asyncio.to_thread(render_png, data, labels)
