"""The quota stage: before a model call, check every limit that binds it and hold an estimate.

Remaining = limit - (settled spend in the ledger + reservations of calls in flight). The check and the
reservation run in one transaction serialised per workspace (bot.storage.quotas.lock_workspace), so
concurrent turns see each other's reservations: a limit is overshot by at most the calls admitted
while it still had room, each by no more than what it cost. After the call the reservation is
deleted once the ledger row carries the reported credits; a process that dies leaves reservations
that stop counting when they expire. A turn that calls the model again (tool rounds, a summary sized
by its transcript) `extend`s its hold to the next call first, checked the same way, so a person
overshoots by at most the call that crossed the limit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.storage import quotas as store
from bot.usage.limits import (
    SCOPE_COLUMN,
    DefaultLimits,
    LimitKey,
    LimitUse,
    Override,
    Period,
    Scope,
    Subject,
    applicable_limits,
    local_today,
    period_bounds,
    resets_at,
)
from bot.usage.report import format_count

log = logging.getLogger(__name__)

# Credits per token before the ledger has any priced call: above GLM-5's observed ~8.3 (11,136 credits
# for 1,348 tokens), so an uncalibrated estimate errs towards holding too much.
DEFAULT_CREDITS_PER_TOKEN = 10.0
CALIBRATION_MARGIN = 1.2
CALIBRATION_TTL = 300.0  # seconds a workspace's credits-per-token figure is reused
OVERRIDES_TTL = 10.0  # seconds another replica's override change may take to bind here
RESERVATION_TTL = timedelta(minutes=15)
# While every limit stays at most this full with the call's estimate, its hold is written without the
# workspace's lock: then even calls racing past each other unseen can overshoot no limit by more than
# their own estimates (the bound the quota promises), and the lock serialised every turn of a
# workspace, holding SQLite's write lock over three statements. Governance on vs off in bench (c),
# 200 mentions at once in one workspace: placeholder p50 +57 % and CPU per reply +17-34 % with the lock
# on every turn. Nearer a limit, the check and hold run under the lock, one call after another.
UNLOCKED_BELOW = 0.5
RAISE_HINT = {Scope.WORKSPACE: "/glm budget"}


@dataclass(frozen=True)
class Reservation:
    """Credits held for one call; `id` None when no limit binds the call and nothing was held."""

    id: int | None
    subject: Subject
    credits: int
    unlocked: bool = False  # held without the workspace's lock (Quotas.UNLOCKED_BELOW)


@dataclass
class FarHold:
    """A call's binding limits and estimate, planned before the transaction that holds it (Quotas.plan_far
    and hold_far, or reserve's own fast path)."""

    subject: Subject
    limits: dict[LimitKey, int]
    estimate: int
    now: datetime
    counted: bool = False  # in this process's unlocked and uncommitted sums, until its transaction ends
    held: bool = False  # its row was written


@dataclass(frozen=True)
class QuotaRefused:
    """A limit is used up: the call is not made. `note` is the one line shown in the thread."""

    use: LimitUse
    resets_at: datetime  # local, in USAGE_DIGEST_TZ

    @property
    def note(self) -> str:
        key, when = self.use.key, self.resets_at
        span = "daily" if key.period is Period.DAY else "monthly"
        whose = {
            Scope.USER: f"You have used your {span} AI limit",
            Scope.CHANNEL: f"This channel has used its {span} AI limit",
            Scope.WORKSPACE: f"The workspace has used its {span} AI budget",
        }[key.scope]
        command = RAISE_HINT.get(key.scope, "/glm quota")
        return (
            f"{whose} ({format_count(self.use.limit)} credits). It resets at "
            f"{when:%H:%M} on {when:%a} {when.day} {when:%b} ({when.tzinfo}); "
            f"a bot admin or workspace admin can raise it with `{command}`."
        )


class Quotas:
    """One per process. `on_settled` is told who spent once a call is settled (alerts run there)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        defaults: DefaultLimits,
        tz: ZoneInfo,
        *,
        reservation_ttl: timedelta = RESERVATION_TTL,
        on_settled: Callable[[Subject], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self.defaults = defaults
        self.tz = tz
        self._ttl = reservation_ttl
        self.on_settled = on_settled
        self._overrides: dict[str, tuple[float, list[Override]]] = {}
        self._rates: dict[str, tuple[float, store.Calibration]] = {}
        # Estimates this process holds without the lock (a workspace's), until settled: counted once
        # more by its checks without the lock, so two of them racing here never both see the room.
        self._unlocked: dict[str, int] = {}
        # Of those, the ones whose row is not committed yet: a check under the lock counts them too
        # (on SQLite they cannot commit while it holds the write lock, so its SELECT cannot see them).
        self._uncommitted: dict[str, int] = {}

    async def reserve(
        self,
        subject: Subject,
        *,
        prompt_tokens: int,
        max_output_tokens: int,
        now: datetime | None = None,
        history_allowance: bool = False,
        near: bool = False,
    ) -> Reservation | QuotaRefused:
        """Check the limits binding `subject` and hold an estimate of the call's cost, or refuse.

        `history_allowance`: `prompt_tokens` is the new message only (admission runs before the
        history is read), so the workspace's recent average prompt is added for the rest.
        `near`: a hold without the lock was just refused (`hold_far`): check under the lock at once.
        """
        plan = await self._plan(subject, prompt_tokens, max_output_tokens, now, history_allowance)
        if plan is None:
            return Reservation(None, subject, 0)  # nothing to check: no statement on the hot path
        held = None if near else await self._hold_if_far(plan)
        if held is not None:
            return held
        async with self._sessions.begin() as session:
            await store.lock_workspace(session, subject.team_id, plan.now)
            return await self._check_and_hold(session, subject, plan.limits, plan.estimate, plan.now)

    async def _hold_if_far(self, plan: FarHold) -> Reservation | None:
        """Hold `plan`'s estimate without the workspace's lock when every limit stays at most
        UNLOCKED_BELOW full, in one statement that checks and inserts; None: near a limit (the
        caller checks under the lock)."""
        committed = False
        try:
            async with self._sessions.begin() as session:
                held = await self.hold_far(session, plan)
            committed = True
        finally:
            self.far_hold_ended(plan, committed=committed)
        return held

    async def plan_far(
        self,
        subject: Subject,
        *,
        prompt_tokens: int,
        max_output_tokens: int,
        now: datetime | None = None,
    ) -> FarHold | None:
        """The hold a caller's own transaction may take with `hold_far` (the admission claim's), its
        estimate made now (the overrides and calibration read here, outside that transaction); None
        when no limit binds `subject`. `prompt_tokens` is the new message only: the workspace's
        recent average prompt is added for the history."""
        return await self._plan(subject, prompt_tokens, max_output_tokens, now, history_allowance=True)

    async def _plan(
        self,
        subject: Subject,
        prompt_tokens: int,
        max_output_tokens: int,
        now: datetime | None,
        history_allowance: bool,
    ) -> FarHold | None:
        """The limits binding `subject` and the call's estimate; None when no limit binds."""
        limits = applicable_limits(subject, self.defaults, await self.overrides(subject.team_id))
        if not limits:
            return None
        calibration = await self._calibration(subject.team_id)
        if history_allowance:
            prompt_tokens += calibration.average_prompt_tokens
        estimate = self._estimate(calibration, prompt_tokens + max_output_tokens)
        return FarHold(subject, limits, estimate, now or datetime.now(UTC))

    async def hold_far(self, session: AsyncSession, plan: FarHold) -> Reservation | None:
        """In the caller's transaction: `plan`'s hold if every limit stays at most UNLOCKED_BELOW full
        with it, else None (the caller reserves under the lock). `far_hold_ended` must follow once
        that transaction has ended, whether it committed or not."""
        subject, estimate = plan.subject, plan.estimate
        team = subject.team_id
        mine = self._unlocked.get(team, 0) + estimate
        today = local_today(self.tz, plan.now)
        ceilings = []
        for key, limit in plan.limits.items():
            start, end = period_bounds(key.period, today, self.tz)
            window = store.Window(SCOPE_COLUMN[key.scope], key.subject_id, start, end)
            ceilings.append((window, math.floor(limit * UNLOCKED_BELOW) - mine))
        self._unlocked[team] = mine
        _add(self._uncommitted, team, estimate)
        plan.counted = True
        reservation_id = await store.reserve_below(
            session,
            ceilings,
            team_id=team,
            channel_id=subject.channel_id,
            user_id=subject.user_id,
            credits=estimate,
            now=plan.now,
            ttl=self._ttl,
        )
        if reservation_id is None:
            return None
        plan.held = True
        return Reservation(reservation_id, subject, estimate, unlocked=True)

    def far_hold_ended(self, plan: FarHold, *, committed: bool) -> None:
        """`hold_far`'s transaction ended: its hold is seen by every check now, or it is gone."""
        if not plan.counted:
            return
        plan.counted = False
        team = plan.subject.team_id
        _add(self._uncommitted, team, -plan.estimate)
        if not (committed and plan.held):
            self._forget_unlocked(team, plan.estimate)

    def _forget_unlocked(self, team: str, credits: int) -> None:
        _add(self._unlocked, team, -credits)

    async def extend(
        self,
        reservation: Reservation,
        *,
        prompt_tokens: int,
        max_output_tokens: int,
        now: datetime | None = None,
    ) -> Reservation | QuotaRefused:
        """The same turn calls the model again: its earlier call is in the ledger by now, so its hold
        is swapped for the next call's estimate, checked like a new call (others' holds count, its
        own no longer). Refused: the hold is gone and the call must not be made."""
        subject = reservation.subject
        limits = applicable_limits(subject, self.defaults, await self.overrides(subject.team_id))
        if not limits:
            return reservation  # none binds (lifted mid-turn?): what is held is settled at the end
        estimate = self._estimate(await self._calibration(subject.team_id), prompt_tokens + max_output_tokens)
        now = now or datetime.now(UTC)
        async with self._sessions.begin() as session:
            await store.lock_workspace(session, subject.team_id, now)
            if reservation.id is not None:
                await store.release(session, reservation.id)
            held = await self._check_and_hold(session, subject, limits, estimate, now)
        if reservation.unlocked:  # its hold is gone now
            self._forget_unlocked(subject.team_id, reservation.credits)
        return held

    async def _check_and_hold(
        self,
        session: AsyncSession,
        subject: Subject,
        limits: dict[LimitKey, int],
        estimate: int,
        now: datetime,
    ) -> Reservation | QuotaRefused:
        """Inside the workspace's lock: refuse when a limit has no room left, else hold `estimate`."""
        unseen = self._uncommitted.get(subject.team_id, 0)  # read before the SELECT: see above
        uses = await self._uses(session, limits, now)
        if unseen:
            uses = [LimitUse(use.key, use.limit, use.spent, use.reserved + unseen) for use in uses]
        refused = [use for use in uses if use.remaining <= 0]
        if refused:
            today = local_today(self.tz, now)
            latest = max(refused, key=lambda use: resets_at(use.key.period, today, self.tz))
            return QuotaRefused(latest, resets_at(latest.key.period, today, self.tz))
        reservation_id = await store.reserve(
            session,
            team_id=subject.team_id,
            channel_id=subject.channel_id,
            user_id=subject.user_id,
            credits=estimate,
            now=now,
            ttl=self._ttl,
        )
        return Reservation(reservation_id, subject, estimate)

    @staticmethod
    def _estimate(calibration: store.Calibration, tokens: int) -> int:
        measured = calibration.credits_per_token
        rate = DEFAULT_CREDITS_PER_TOKEN if measured is None else measured * CALIBRATION_MARGIN
        return math.ceil(tokens * rate)

    async def settle(self, reservation: Reservation, *, spent: int | None = None) -> None:
        """Drop the hold once the call's ledger row (with the reported credits) is written; then
        alert checks may run. A failure here is logged, not raised: the reservation expires.

        `spent`: what the turn cost, when known. A turn held far from every limit (every limit at
        most UNLOCKED_BELOW used, every live hold and its own counted) that cost no more than its hold
        cannot have taken a limit past an alert threshold (80 %): its subject is not checked now. A
        crossing that a neighbour's overrun leaves to such a turn is posted by the sweep (5 minutes).
        """
        if reservation.unlocked:
            self._forget_unlocked(reservation.subject.team_id, reservation.credits)
        if reservation.id is not None:
            try:
                async with self._sessions.begin() as session:
                    await store.release(session, reservation.id)
            except Exception as exc:  # the turn is over; a leaked hold only lasts until it expires
                log.warning("could not release a quota reservation (%s); it expires", type(exc).__name__)
        stayed_far = reservation.unlocked and spent is not None and spent <= reservation.credits
        if self.on_settled is not None and not stayed_far:
            self.on_settled(reservation.subject)

    async def uses(self, subject: Subject, now: datetime | None = None) -> list[LimitUse]:
        """Every limit binding `subject` and how much of it is used (for /usage and alerts)."""
        limits = applicable_limits(subject, self.defaults, await self.overrides(subject.team_id))
        if not limits:
            return []
        async with self._sessions() as session:
            return await self._uses(session, limits, now or datetime.now(UTC))

    async def overrides(self, team_id: str) -> list[Override]:
        cached = self._overrides.get(team_id)
        if cached is not None and time.monotonic() - cached[0] < OVERRIDES_TTL:
            return cached[1]
        async with self._sessions() as session:
            found = await store.overrides(session, team_id)
        self._overrides[team_id] = (time.monotonic(), found)
        return found

    def forget_overrides(self, team_id: str) -> None:
        """An override changed in this process: bind it from the next turn on."""
        self._overrides.pop(team_id, None)

    async def _uses(
        self, session: AsyncSession, limits: dict[LimitKey, int], now: datetime
    ) -> list[LimitUse]:
        today = local_today(self.tz, now)
        keys = list(limits)
        windows = []
        for key in keys:
            start, end = period_bounds(key.period, today, self.tz)
            windows.append(store.Window(SCOPE_COLUMN[key.scope], key.subject_id, start, end))
        owners = sorted({(SCOPE_COLUMN[key.scope], key.subject_id) for key in keys})
        spent, reserved = await store.spend(session, windows, owners, now)
        held = dict(zip(owners, reserved, strict=True))
        return [
            LimitUse(key, limits[key], spent[i], held[(SCOPE_COLUMN[key.scope], key.subject_id)])
            for i, key in enumerate(keys)
        ]

    async def _calibration(self, team_id: str) -> store.Calibration:
        cached = self._rates.get(team_id)
        if cached is not None and time.monotonic() - cached[0] < CALIBRATION_TTL:
            return cached[1]
        async with self._sessions() as session:
            measured = await store.calibration(session, team_id)
        self._rates[team_id] = (time.monotonic(), measured)
        return measured


def _add(totals: dict[str, int], team: str, credits: int) -> None:
    left = totals.get(team, 0) + credits
    if left > 0:
        totals[team] = left
    else:
        totals.pop(team, None)
