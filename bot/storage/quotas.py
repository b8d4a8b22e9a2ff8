"""Quota storage: overrides, reservations for calls in flight, spend sums, and alerts sent once.

Functions take a session and never commit. `lock_workspace` must be the first statement of the
transaction that checks and reserves: it serialises those transactions per workspace on PostgreSQL
(an advisory transaction lock) and on SQLite (a write as the first statement takes the database's
write lock at once, as BEGIN IMMEDIATE would, so no reader decides on a stale snapshot).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Insert,
    Select,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import Base, QuotaAlert, QuotaOverride, QuotaReservation, UsageRecord, utcnow
from bot.usage.limits import LimitKey, Override, Period, Scope

# A claimed alert whose post never landed (a crash, Slack down) is taken over after this long.
ALERT_STALE_AFTER = timedelta(minutes=5)


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _lock_key(team_id: str) -> int:
    # A stable signed 64-bit key per workspace; the prefix keeps it apart from other advisory locks.
    digest = hashlib.blake2b(f"quota:{team_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def lock_workspace(session: AsyncSession, team_id: str, now: datetime) -> None:
    """Serialise quota check-and-reserve transactions of one workspace until this one ends."""
    if _dialect(session) == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(team_id)})
        return
    # SQLite: the purge is the lock (any write takes it), and it keeps the table small.
    await purge_expired(session, now, team_id=team_id)


async def purge_expired(session: AsyncSession, now: datetime, *, team_id: str | None = None) -> int:
    """Delete reservations whose process never settled them (it died); they already stopped counting."""
    stmt = delete(QuotaReservation).where(QuotaReservation.expires_at < now.astimezone(UTC))
    if team_id is not None:
        stmt = stmt.where(QuotaReservation.team_id == team_id)
    result = await session.execute(stmt)
    return int(getattr(result, "rowcount", 0) or 0)


async def overrides(session: AsyncSession, team_id: str) -> list[Override]:
    rows = await session.execute(
        select(
            QuotaOverride.scope, QuotaOverride.subject_id, QuotaOverride.period, QuotaOverride.credits
        ).where(QuotaOverride.team_id == team_id)
    )
    return [
        Override(Scope(scope), subject, Period(period), credits) for scope, subject, period, credits in rows
    ]


async def set_override(
    session: AsyncSession,
    team_id: str,
    override: Override,
    *,
    updated_by: str | None,
) -> tuple[bool, int | None]:
    """Store an admin's limit; returns (whether one existed before, its credits then) for the audit."""
    existing = await session.scalar(
        select(QuotaOverride).where(
            QuotaOverride.team_id == team_id,
            QuotaOverride.scope == override.scope.value,
            QuotaOverride.subject_id == override.subject_id,
            QuotaOverride.period == override.period.value,
        )
    )
    if existing is None:
        session.add(
            QuotaOverride(
                team_id=team_id,
                scope=override.scope.value,
                subject_id=override.subject_id,
                period=override.period.value,
                credits=override.credits,
                updated_by=updated_by,
                updated_at=utcnow(),
            )
        )
        await session.flush()
        return False, None
    before = existing.credits
    existing.credits, existing.updated_by, existing.updated_at = override.credits, updated_by, utcnow()
    await session.flush()
    return True, before


async def delete_override(session: AsyncSession, team_id: str, key: LimitKey) -> tuple[bool, int | None]:
    """Go back to the setting's default; returns (whether an override existed, its credits)."""
    existing = await session.scalar(
        select(QuotaOverride).where(
            QuotaOverride.team_id == team_id,
            QuotaOverride.scope == key.scope.value,
            QuotaOverride.subject_id == key.subject_id,
            QuotaOverride.period == key.period.value,
        )
    )
    if existing is None:
        return False, None
    before = existing.credits
    await session.delete(existing)
    await session.flush()
    return True, before


@dataclass(frozen=True)
class Window:
    """A sum to take: the ledger's spend of one subject in [start, end), or None to skip it."""

    column: str  # "user_id", "channel_id" or "team_id"
    subject_id: str
    start: datetime
    end: datetime


# The hot statements are built once per shape (which owners' windows they sum) with bound values:
# building them per call (expressions, then the cache key) was most of what the checks cost
# (py-spy, bench (c) with every limit set: reserve_below and the alert checks' sums, 6 % of the CPU).
_USAGE = Base.metadata.tables["usage_records"]
_HOLDS = Base.metadata.tables["quota_reservations"]
_HOLD_COLUMNS = ("team_id", "channel_id", "user_id", "credits", "created_at", "expires_at")


def _spent_sum(column: str, i: int) -> ColumnElement[Any]:
    """Settled credits of `owner_<i>` in [`start_<i>`, `end_<i>`)."""
    return (
        select(func.coalesce(func.sum(_USAGE.c.credits_used), 0))
        .where(
            _USAGE.c[column] == bindparam(f"owner_{i}"),
            _USAGE.c.created_at >= bindparam(f"start_{i}"),
            _USAGE.c.created_at < bindparam(f"end_{i}"),
        )
        .scalar_subquery()
    )


def _held_sum(column: str, owner: str) -> ColumnElement[Any]:
    """Credits of the live holds of the owner bound as `owner` (holds expiring before `now` are over)."""
    return (
        select(func.coalesce(func.sum(_HOLDS.c.credits), 0))
        .where(_HOLDS.c[column] == bindparam(owner), _HOLDS.c.expires_at >= bindparam("now"))
        .scalar_subquery()
    )


def _window_params(windows: Sequence[Window]) -> dict[str, object]:
    params: dict[str, object] = {}
    for i, w in enumerate(windows):
        params[f"owner_{i}"] = w.subject_id
        params[f"start_{i}"] = w.start.astimezone(UTC)
        params[f"end_{i}"] = w.end.astimezone(UTC)
    return params


@functools.cache
def _reserve_statement(columns: tuple[str, ...]) -> Insert:
    room = and_(
        true(),
        *(
            _spent_sum(column, i) + _held_sum(column, f"owner_{i}")
            <= bindparam(f"ceiling_{i}", type_=BigInteger())
            for i, column in enumerate(columns)
        ),
    )
    row = select(*(bindparam(name, type_=_HOLDS.c[name].type) for name in _HOLD_COLUMNS)).where(room)
    return insert(_HOLDS).from_select(_HOLD_COLUMNS, row).returning(_HOLDS.c.id)


@functools.cache
def _spend_statement(windows: tuple[str, ...], holders: tuple[str, ...]) -> Select[Any]:
    sums = [_spent_sum(column, i) for i, column in enumerate(windows)]
    return select(*sums, *(_held_sum(column, f"holder_{j}") for j, column in enumerate(holders)))


async def reserve_below(
    session: AsyncSession,
    ceilings: list[tuple[Window, int]],
    *,
    team_id: str,
    channel_id: str | None,
    user_id: str | None,
    credits: int,
    now: datetime,
    ttl: timedelta,
) -> int | None:
    """In one statement: hold `credits` only if each window's spend plus its subject's live holds
    stays within its ceiling (no ceilings: always); the hold's id, or None (nothing written)."""
    windows = [window for window, _ in ceilings]
    params = _window_params(windows)
    params.update({f"ceiling_{i}": ceiling for i, (_, ceiling) in enumerate(ceilings)})
    params.update(
        team_id=team_id,
        channel_id=channel_id,
        user_id=user_id,
        credits=credits,
        created_at=now.astimezone(UTC),
        expires_at=(now + ttl).astimezone(UTC),
        now=now.astimezone(UTC),
    )
    stmt = _reserve_statement(tuple(w.column for w in windows))
    held: int | None = (await session.execute(stmt, params)).scalar_one_or_none()
    return held


async def spend(
    session: AsyncSession, windows: list[Window], reserved_for: list[tuple[str, str]], now: datetime
) -> tuple[list[int], list[int]]:
    """In one statement: each window's settled credits, and each (column, id)'s live reservations."""
    if not windows and not reserved_for:
        return [], []
    params = _window_params(windows)
    params.update({f"holder_{j}": subject_id for j, (_, subject_id) in enumerate(reserved_for)})
    params["now"] = now.astimezone(UTC)
    stmt = _spend_statement(tuple(w.column for w in windows), tuple(column for column, _ in reserved_for))
    row = (await session.execute(stmt, params)).one()
    values = [int(v or 0) for v in row]  # PostgreSQL sums bigint as NUMERIC
    return values[: len(windows)], values[len(windows) :]


async def reserve(
    session: AsyncSession,
    *,
    team_id: str,
    channel_id: str | None,
    user_id: str | None,
    credits: int,
    now: datetime,
    ttl: timedelta,
) -> int:
    """Hold `credits` unconditionally (the caller checked the limits under the workspace's lock)."""
    held = await reserve_below(
        session,
        [],
        team_id=team_id,
        channel_id=channel_id,
        user_id=user_id,
        credits=credits,
        now=now,
        ttl=ttl,
    )
    assert held is not None  # no ceiling: the row is always written
    return held


_RELEASE = delete(_HOLDS).where(_HOLDS.c.id == bindparam("reservation_id"))


async def release(session: AsyncSession, reservation_id: int) -> None:
    await session.execute(_RELEASE, {"reservation_id": reservation_id})


@dataclass(frozen=True)
class Calibration:
    """What the workspace's recent calls cost per token, and their average prompt (history included)."""

    credits_per_token: float | None  # None: no priced call yet
    average_prompt_tokens: int


async def calibration(session: AsyncSession, team_id: str, rows: int = 200) -> Calibration:
    """From the workspace's last `rows` calls whose credits and tokens are known, in one statement."""
    recent = (
        select(
            UsageRecord.credits_used.label("credits"),
            func.coalesce(UsageRecord.prompt_tokens, 0).label("prompt"),
            (
                func.coalesce(UsageRecord.prompt_tokens, 0) + func.coalesce(UsageRecord.completion_tokens, 0)
            ).label("tokens"),
        )
        .where(
            UsageRecord.team_id == team_id,
            UsageRecord.credits_used.is_not(None),
            UsageRecord.credits_used > 0,
            UsageRecord.completion_tokens.is_not(None),
        )
        .order_by(UsageRecord.id.desc())
        .limit(rows)
        .subquery()
    )
    credits, tokens, prompt = (
        await session.execute(
            select(func.sum(recent.c.credits), func.sum(recent.c.tokens), func.avg(recent.c.prompt))
        )
    ).one()
    rate = float(credits) / float(tokens) if credits and tokens else None
    return Calibration(rate, round(float(prompt or 0)))


# ---- alerts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertKey:
    team_id: str
    scope: str
    subject_id: str
    period: str
    period_start: date
    threshold: int


def _insert_alert(dialect: str) -> Insert:
    columns = ["team_id", "scope", "subject_id", "period", "period_start", "threshold"]
    if dialect == "postgresql":
        return postgresql.insert(QuotaAlert).on_conflict_do_nothing(index_elements=columns)
    return sqlite.insert(QuotaAlert).on_conflict_do_nothing(index_elements=columns)


def _same(key: AlertKey) -> ColumnElement[bool]:
    return and_(
        QuotaAlert.team_id == key.team_id,
        QuotaAlert.scope == key.scope,
        QuotaAlert.subject_id == key.subject_id,
        QuotaAlert.period == key.period,
        QuotaAlert.period_start == key.period_start,
        QuotaAlert.threshold == key.threshold,
    )


async def claim_alert(
    session: AsyncSession,
    key: AlertKey,
    text_: str,
    now: datetime,
    stale_after: timedelta = ALERT_STALE_AFTER,
) -> int | None:
    """Claim the right to post this alert: the row's id when this caller won, None when it was
    claimed before (posted, or being posted by another process whose claim is still fresh)."""
    now = now.astimezone(UTC)
    inserted = await session.execute(
        _insert_alert(_dialect(session))
        .values(**key.__dict__, text=text_, claimed_at=now)
        .returning(QuotaAlert.id)
    )
    new_id = inserted.scalar_one_or_none()
    if new_id is not None:
        return int(new_id)
    # Taken over only when unposted and stale; the WHERE is checked under the row lock, so of two
    # racers one wins.
    taken = await session.execute(
        update(QuotaAlert)
        .where(_same(key), QuotaAlert.posted_at.is_(None), QuotaAlert.claimed_at < now - stale_after)
        .values(claimed_at=now)
        .returning(QuotaAlert.id)
    )
    again = taken.scalar_one_or_none()
    return int(again) if again is not None else None


async def mark_alert_posted(session: AsyncSession, alert_id: int, now: datetime) -> None:
    await session.execute(
        update(QuotaAlert).where(QuotaAlert.id == alert_id).values(posted_at=now.astimezone(UTC))
    )


async def stale_unposted_alerts(
    session: AsyncSession, now: datetime, stale_after: timedelta = ALERT_STALE_AFTER, *, since: date
) -> list[tuple[AlertKey, str]]:
    """Alerts claimed but never posted, whose claim went stale: the periodic job retries them."""
    rows = await session.execute(
        select(QuotaAlert).where(
            QuotaAlert.posted_at.is_(None),
            QuotaAlert.claimed_at < (now.astimezone(UTC) - stale_after),
            QuotaAlert.period_start >= since,
        )
    )
    return [
        (AlertKey(a.team_id, a.scope, a.subject_id, a.period, a.period_start, a.threshold), a.text)
        for a in rows.scalars()
    ]


async def spenders(
    session: AsyncSession, column: str, start: datetime, end: datetime
) -> list[tuple[str, str, int]]:
    """(team, subject, credits) for every user or channel with spend in [start, end)."""
    owner = getattr(UsageRecord, column)
    credits = func.coalesce(func.sum(UsageRecord.credits_used), 0)
    rows = await session.execute(
        select(UsageRecord.team_id, owner, credits)
        .where(
            UsageRecord.created_at >= start.astimezone(UTC),
            UsageRecord.created_at < end.astimezone(UTC),
            owner.is_not(None),
            UsageRecord.team_id.is_not(None),
        )
        .group_by(UsageRecord.team_id, owner)
    )
    return [(str(team), str(subject), int(c or 0)) for team, subject, c in rows]
