"""Credit limits: which apply to a person, a channel and the workspace, and the periods they count.

The settings give the defaults; an admin's override (stored in the database) replaces the default for
one subject. Days and months are local to USAGE_DIGEST_TZ, so "today" resets at local midnight.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from bot.usage.report import day_bounds


class Scope(enum.StrEnum):
    USER = "user"
    CHANNEL = "channel"
    WORKSPACE = "workspace"


# The ledger column (usage_records) that says whose spend a row is, for each scope.
SCOPE_COLUMN = {Scope.USER: "user_id", Scope.CHANNEL: "channel_id", Scope.WORKSPACE: "team_id"}


class Period(enum.StrEnum):
    DAY = "day"
    MONTH = "month"


# The limits that exist: a person per day and per month, a channel per day, the workspace per month.
# The override commands may set any (scope, period) pair; these are the ones with a setting.
DEFAULT_KINDS: tuple[tuple[Scope, Period], ...] = (
    (Scope.USER, Period.DAY),
    (Scope.USER, Period.MONTH),
    (Scope.CHANNEL, Period.DAY),
    (Scope.WORKSPACE, Period.MONTH),
)


@dataclass(frozen=True)
class DefaultLimits:
    """The settings' limits in credits; None is no limit."""

    user_day: int | None = None
    user_month: int | None = None
    channel_day: int | None = None
    workspace_month: int | None = None

    def get(self, scope: Scope, period: Period) -> int | None:
        return {
            (Scope.USER, Period.DAY): self.user_day,
            (Scope.USER, Period.MONTH): self.user_month,
            (Scope.CHANNEL, Period.DAY): self.channel_day,
            (Scope.WORKSPACE, Period.MONTH): self.workspace_month,
        }.get((scope, period))


@dataclass(frozen=True)
class Override:
    """An admin's limit for one subject; `credits` None lifts the default for it."""

    scope: Scope
    subject_id: str
    period: Period
    credits: int | None


@dataclass(frozen=True)
class LimitKey:
    scope: Scope
    subject_id: str  # user id, channel id, or the team id for the workspace
    period: Period


@dataclass(frozen=True)
class Subject:
    """Who a model call is charged to: a person in a channel of a workspace."""

    team_id: str
    channel_id: str | None
    user_id: str | None

    def key(self, scope: Scope, period: Period) -> LimitKey | None:
        subject = {Scope.USER: self.user_id, Scope.CHANNEL: self.channel_id, Scope.WORKSPACE: self.team_id}[
            scope
        ]
        return LimitKey(scope, subject, period) if subject else None


def applicable_limits(
    subject: Subject, defaults: DefaultLimits, overrides: Iterable[Override]
) -> dict[LimitKey, int]:
    """The limits that bind `subject`'s calls: each default unless overridden, plus other overrides."""
    limits: dict[LimitKey, int | None] = {}
    for scope, period in DEFAULT_KINDS:
        key = subject.key(scope, period)
        if key is not None:
            limits[key] = defaults.get(scope, period)
    for override in overrides:
        key = subject.key(override.scope, override.period)
        if key is not None and key.subject_id == override.subject_id:
            limits[key] = override.credits
    return {key: value for key, value in limits.items() if value is not None}


def limit_for(key: LimitKey, defaults: DefaultLimits, overrides: Iterable[Override]) -> int | None:
    for override in overrides:
        if (override.scope, override.subject_id, override.period) == (key.scope, key.subject_id, key.period):
            return override.credits
    return defaults.get(key.scope, key.period)


def period_start(period: Period, today: date) -> date:
    return today if period is Period.DAY else today.replace(day=1)


def next_period_start(period: Period, today: date) -> date:
    if period is Period.DAY:
        return date.fromordinal(today.toordinal() + 1)
    return date(today.year + 1, 1, 1) if today.month == 12 else date(today.year, today.month + 1, 1)


def period_bounds(period: Period, today: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The UTC instants [start, end) of the local day or month containing `today`."""
    start, _ = day_bounds(period_start(period, today), tz)
    end, _ = day_bounds(next_period_start(period, today), tz)
    return start, end


def local_today(tz: ZoneInfo, now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(tz).date()


def resets_at(period: Period, today: date, tz: ZoneInfo) -> datetime:
    """The local moment the period's count starts again."""
    return datetime.combine(next_period_start(period, today), time(0), tzinfo=tz)


@dataclass(frozen=True)
class LimitUse:
    """One limit and what counts against it now: settled spend from the ledger plus reservations."""

    key: LimitKey
    limit: int
    spent: int
    reserved: int = 0

    @property
    def used(self) -> int:
        return self.spent + self.reserved

    @property
    def remaining(self) -> int:
        return self.limit - self.used

    @property
    def fraction(self) -> float:
        """Settled spend as a share of the limit (a zero limit counts as full)."""
        return self.spent / self.limit if self.limit > 0 else 1.0
