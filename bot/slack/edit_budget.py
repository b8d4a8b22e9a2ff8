"""Per-workspace, per-method budgets for Slack's rate-limited calls, shared by every reply (and, on
PostgreSQL, by every replica: bot.slack.shared_budget).

One mechanism for every method a reply spends: `chat.update` (Tier 3, about 50 a minute per
workspace), `chat.startStream` and `chat.stopStream` (Tier 2, about 20), `chat.appendStream` (Tier 4,
about 100) and `assistant.threads.setStatus` (about 600). Slack publishes no exact numbers, so each
budget starts from a configured rate and adapts: a 429 cuts the rate and blocks every edit of that
workspace until `Retry-After` has passed; sustained success slowly raises it back. Waiting streams are
served fairly (the stream whose last edit is oldest goes first), and final edits go before interim ones.
The waiting and its order are this process's (`EditBudget`); when the next call may go is a
`Bucket`'s: `LocalBucket` here, or the replicas' shared row.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Protocol

from bot.storage.slack_budgets import Limits

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Urgent = Callable[[], bool]  # whether a final call is among those waiting now


def always_urgent() -> bool:
    return True


DEFAULT_RATE_PER_MINUTE = 45.0
DEFAULT_BURST = 5

UPDATE = "chat.update"
START_STREAM = "chat.startStream"
APPEND_STREAM = "chat.appendStream"
STOP_STREAM = "chat.stopStream"
SET_STATUS = "assistant.threads.setStatus"
SESSION_STATUS = "agents.sessions.setStatus"


@dataclass(frozen=True)
class MethodRate:
    """Where a method's budget starts: calls a minute per workspace and how many may go at once."""

    per_minute: float
    burst: int


# A little under Slack's tiers, as the edit budget always was: the adaptation finds the rest.
DEFAULT_METHOD_RATES: dict[str, MethodRate] = {
    START_STREAM: MethodRate(18.0, 3),
    STOP_STREAM: MethodRate(18.0, 3),
    APPEND_STREAM: MethodRate(90.0, 8),
    # A status is skipped, never waited for, and a 429 costs only that status: start with a burst
    # as big as a busy minute's first second (50 people asking at once), the adaptation cuts it back.
    SET_STATUS: MethodRate(540.0, 60),
    # Tier 3 (about 50 a minute); a tenth less, since Slack counts a call when it arrives.
    SESSION_STATUS: MethodRate(45.0, 5),
}


@dataclass
class _Waiter:
    final: bool
    seq: int
    future: asyncio.Future[None]


# How every budget adapts to Slack (AIMD): a 429 cuts the rate by DECREASE, once per pause, never
# below MIN_RATE; after COOLDOWN seconds without one, each accepted call adds INCREASE a minute.
MIN_RATE_PER_MINUTE = 10.0
DECREASE = 0.7
INCREASE_PER_SUCCESS = 0.25
COOLDOWN = 30.0


def default_limits(per_minute: float, burst: int) -> Limits:
    """A budget of `per_minute` and `burst` that adapts as every budget does by default."""
    return Limits(
        per_minute, min(MIN_RATE_PER_MINUTE, per_minute), burst, INCREASE_PER_SUCCESS, DECREASE, COOLDOWN
    )


class Bucket(Protocol):
    """Where a budget's calls come from: this process's token bucket, or one shared by replicas."""

    @property
    def rate_per_minute(self) -> float: ...

    def available(self) -> float:
        """Calls that may start now without waiting (0 while paused after a 429)."""
        ...

    def blocked_for(self) -> float:
        """Seconds until calls are allowed again after a 429 (0 when not paused)."""
        ...

    async def take(self, urgent: Urgent = always_urgent) -> None:
        """Return when one call may go now, having spent it. While `urgent()` is false (only
        interim calls wait), a shared bucket lets other replicas' final calls go first."""
        ...

    def give_back(self) -> None:
        """The call just taken was not made (its waiter left): the next `take` may use it."""
        ...

    async def book(self, calls: int) -> list[float]:
        """Spend `calls` at once, ahead of every call not yet taken (here and, shared, on every
        replica): the seconds from now at which each may go."""
        ...

    def penalize(self, retry_after: float) -> None: ...

    def reward(self) -> None: ...


class BucketSource(Protocol):
    """Makes the bucket of each (workspace, method): bot.slack.shared_budget's, across replicas."""

    def bucket(self, team: str, method: str, limits: Limits) -> Bucket: ...


class LocalBucket:
    """A token bucket in this process, adapting to 429s: the budget of a single process (SQLite), and
    a replica's share while the shared one's database is unreachable."""

    def __init__(
        self, limits: Limits, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self._limits, self._clock, self._sleep = limits, clock, sleep
        self._rate = limits.max_rate
        self._tokens = float(limits.burst)
        self._updated = clock()
        self._blocked_until = -math.inf
        self._last_penalty = -math.inf

    @property
    def rate_per_minute(self) -> float:
        return self._rate

    def available(self) -> float:
        now = self._clock()
        if now < self._blocked_until:
            return 0.0
        self._refill(now)
        return max(0.0, self._tokens)

    def blocked_for(self) -> float:
        return max(0.0, self._blocked_until - self._clock())

    async def take(self, urgent: Urgent = always_urgent) -> None:  # noqa: ARG002 - one process: its own order
        while (delay := self._wait_time()) > 0:
            await self._sleep(delay)
        self._tokens -= 1.0

    def give_back(self) -> None:
        self._tokens = min(float(self._limits.burst), self._tokens + 1.0)

    async def book(self, calls: int) -> list[float]:
        now = self._clock()
        self._refill(now)
        origin = max(now, self._updated, self._blocked_until)
        interval = 60.0 / self._rate
        waits = [origin - now + max(0.0, 1.0 - (self._tokens - n)) * interval for n in range(calls)]
        self._tokens -= calls  # in debt: the calls after these wait until it is paid off
        return waits

    def penalize(self, retry_after: float) -> None:
        now = self._clock()
        already_blocked = now < self._blocked_until  # 429s of calls that were in flight together
        self._blocked_until = max(self._blocked_until, now + max(retry_after, 0.0))
        self._tokens, self._updated = 1.0, self._blocked_until  # one call when the block ends
        self._last_penalty = now
        if not already_blocked:
            self._rate = max(self._limits.min_rate, self._rate * self._limits.decrease)

    def reward(self) -> None:
        if self._clock() - self._last_penalty >= self._limits.cooldown:
            self._rate = min(self._limits.max_rate, self._rate + self._limits.increase)

    def _refill(self, now: float) -> None:
        if now > self._updated:
            burst = float(self._limits.burst)
            self._tokens = min(burst, self._tokens + (now - self._updated) * self._rate / 60.0)
            self._updated = now

    def _wait_time(self) -> float:
        now = self._clock()
        if now < self._blocked_until:
            return self._blocked_until - now
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) * 60.0 / self._rate


class EditBudget:
    """A budget with fair, prioritised waiting over a bucket that adapts to Slack's 429s (AIMD).

    Call `await acquire(stream, final=...)` before each edit, then `reward()` when Slack accepted it
    or `penalize(retry_after)` when it answered 429. `forget(stream)` when a stream ends. Which
    waiting stream goes next is always this process's choice (oldest last call first, finals
    first); the bucket only says when the next call may go.
    """

    def __init__(
        self,
        rate_per_minute: float = DEFAULT_RATE_PER_MINUTE,
        burst: int = DEFAULT_BURST,
        *,
        min_rate_per_minute: float = MIN_RATE_PER_MINUTE,
        decrease: float = DECREASE,
        increase_per_success: float = INCREASE_PER_SUCCESS,
        cooldown: float = COOLDOWN,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        bucket: Bucket | None = None,
    ) -> None:
        if rate_per_minute <= 0 or burst < 1:
            raise ValueError("a Slack budget needs a positive rate and a burst of at least 1")
        self.max_rate = rate_per_minute
        self.min_rate = min(min_rate_per_minute, rate_per_minute)
        self.burst = burst
        self.limits = Limits(rate_per_minute, self.min_rate, burst, increase_per_success, decrease, cooldown)
        self._bucket = bucket or LocalBucket(self.limits, clock=clock, sleep=sleep)
        self._clock = clock
        self._waiters: dict[Hashable, _Waiter] = {}
        self._last_grant: dict[Hashable, float] = {}
        self._seq = itertools.count()
        self._pump: asyncio.Task[None] | None = None
        self.method = UPDATE  # for log lines; EditBudgets names each budget's method

    # ---- state, for metrics and tests ----------------------------------------------------------

    @property
    def rate_per_minute(self) -> float:
        return self._bucket.rate_per_minute

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def available(self) -> float:
        """Edits that may start now without waiting (0 while blocked after a 429)."""
        return self._bucket.available()

    def blocked_for(self) -> float:
        """Seconds until edits are allowed again after a 429 (0 when not blocked)."""
        return self._bucket.blocked_for()

    def expected_wait(self, extra: int = 0) -> float:
        """About how long a request made now would wait: behind those already waiting and `extra`
        calls promised elsewhere (e.g. the stops that open streams will need)."""
        blocked = self.blocked_for()
        tokens = 1.0 if blocked else self.available()  # one call when a block ends
        short = len(self._waiters) + extra + 1 - tokens
        return blocked + max(0.0, short) * 60.0 / self.rate_per_minute

    # ---- the protocol --------------------------------------------------------------------------

    async def acquire(self, stream: Hashable, *, final: bool = False) -> None:
        """Wait for this stream's turn to edit; one pending request per stream at a time."""
        if stream in self._waiters:
            raise RuntimeError(f"stream {stream!r} is already waiting for an edit")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[stream] = _Waiter(final, next(self._seq), future)
        if self._pump is None:
            self._pump = asyncio.create_task(self._serve(), name=f"budget-{self.method}")
        try:
            await future
        except asyncio.CancelledError:
            if self._waiters.get(stream) is not None and self._waiters[stream].future is future:
                del self._waiters[stream]
            elif future.done() and not future.cancelled():
                self._bucket.give_back()  # granted but unused
            raise

    async def book(self, calls: int) -> list[float]:
        """Spend `calls` at once, ahead of every waiting stream (a dead replica's notes, whose people
        waited longest): the seconds from now at which each may go. `reward`/`penalize` as usual."""
        return await self._bucket.book(calls) if calls > 0 else []

    def promote(self, stream: Hashable) -> None:
        """Turn this stream's pending request into a final one (the reply just ended)."""
        waiter = self._waiters.get(stream)
        if waiter is not None:
            waiter.final = True

    def penalize(self, retry_after: float) -> None:
        """Slack answered 429: block every edit for `retry_after` seconds and cut the rate once."""
        was_blocked, rate = self.blocked_for() > 0, self.rate_per_minute
        self._bucket.penalize(retry_after)
        if not was_blocked:
            logger.warning(
                "%s rate limited; pausing it %.1fs, rate %.1f/min now %.1f/min",
                self.method,
                retry_after,
                rate,
                self.rate_per_minute,
            )

    def reward(self) -> None:
        """Slack accepted an edit: after a quiet period, raise the rate a little, up to the configured one."""
        self._bucket.reward()

    def forget(self, stream: Hashable) -> None:
        """The stream ended: drop its fairness record."""
        self._last_grant.pop(stream, None)

    # ---- internals -----------------------------------------------------------------------------

    def _final_waiting(self) -> bool:
        return any(waiter.final for waiter in self._waiters.values())

    def _next_stream(self) -> Hashable:
        def order(stream: Hashable) -> tuple[bool, float, int]:
            waiter = self._waiters[stream]
            return (not waiter.final, self._last_grant.get(stream, -math.inf), waiter.seq)

        return min(self._waiters, key=order)

    async def _serve(self) -> None:
        try:
            while self._waiters:
                await self._bucket.take(self._final_waiting)
                if not self._waiters:
                    self._bucket.give_back()  # everyone left while we waited
                    break
                stream = self._next_stream()
                waiter = self._waiters.pop(stream)
                if waiter.future.done():
                    self._bucket.give_back()  # its task was cancelled while we chose it
                    continue
                self._last_grant[stream] = self._clock()
                waiter.future.set_result(None)
        finally:
            self._pump = None


class EditBudgets:
    """One `EditBudget` per (workspace, method), created on first use.

    `rate_per_minute` and `burst` configure `chat.update` (the edit budget, as before); `methods`
    the others (default `DEFAULT_METHOD_RATES`). With `shared` (bot.slack.shared_budget, on
    PostgreSQL) every budget draws on its row shared by all replicas; without, on this process's own.
    """

    def __init__(
        self,
        rate_per_minute: float = DEFAULT_RATE_PER_MINUTE,
        burst: int = DEFAULT_BURST,
        *,
        methods: Mapping[str, MethodRate] | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        shared: BucketSource | None = None,
    ) -> None:
        self._rates = {**DEFAULT_METHOD_RATES, **(methods or {}), UPDATE: MethodRate(rate_per_minute, burst)}
        self._clock, self._sleep, self._shared = clock, sleep, shared
        self._budgets: dict[tuple[str, str], EditBudget] = {}

    def by_team(self) -> dict[str, EditBudget]:
        """Every workspace's chat.update budget so far (a copy), for metrics."""
        return {team: budget for (team, method), budget in self._budgets.items() if method == UPDATE}

    def by_method(self) -> dict[tuple[str, str], EditBudget]:
        """Every (workspace, method) budget so far (a copy), for metrics."""
        return dict(self._budgets)

    def for_team(self, team_id: str, method: str = UPDATE) -> EditBudget:
        budget = self._budgets.get((team_id, method))
        if budget is None:
            rate = self._rates.get(method)
            if rate is None:
                raise KeyError(f"no budget is configured for {method}")
            limits = default_limits(rate.per_minute, rate.burst)
            bucket = None if self._shared is None else self._shared.bucket(team_id, method, limits)
            budget = EditBudget(
                rate.per_minute, rate.burst, clock=self._clock, sleep=self._sleep, bucket=bucket
            )
            budget.method = method
            self._budgets[team_id, method] = budget
        return budget
