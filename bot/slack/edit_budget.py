"""Per-workspace, per-method budgets for Slack's rate-limited calls, shared by every reply of the process.

One mechanism for every method a reply spends: `chat.update` (Tier 3, about 50 a minute per
workspace), `chat.startStream` and `chat.stopStream` (Tier 2, about 20), `chat.appendStream` (Tier 4,
about 100) and `assistant.threads.setStatus` (about 600). Slack publishes no exact numbers, so each
budget starts from a configured rate and adapts: a 429 cuts the rate and blocks every edit of that
workspace until `Retry-After` has passed; sustained success slowly raises it back. Waiting streams are
served fairly (the stream whose last edit is oldest goes first), and final edits go before interim ones.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

DEFAULT_RATE_PER_MINUTE = 45.0
DEFAULT_BURST = 5

UPDATE = "chat.update"
START_STREAM = "chat.startStream"
APPEND_STREAM = "chat.appendStream"
STOP_STREAM = "chat.stopStream"
SET_STATUS = "assistant.threads.setStatus"


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
}


@dataclass
class _Waiter:
    final: bool
    seq: int
    future: asyncio.Future[None]


class EditBudget:
    """A token bucket with fair, prioritised waiting and AIMD adaptation to Slack's 429s.

    Call `await acquire(stream, final=...)` before each edit, then `reward()` when Slack accepted it
    or `penalize(retry_after)` when it answered 429. `forget(stream)` when a stream ends.
    """

    def __init__(
        self,
        rate_per_minute: float = DEFAULT_RATE_PER_MINUTE,
        burst: int = DEFAULT_BURST,
        *,
        min_rate_per_minute: float = 10.0,
        decrease: float = 0.7,
        increase_per_success: float = 0.25,
        cooldown: float = 30.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate_per_minute <= 0 or burst < 1:
            raise ValueError("a Slack budget needs a positive rate and a burst of at least 1")
        self.max_rate = rate_per_minute
        self.min_rate = min(min_rate_per_minute, rate_per_minute)
        self.burst = burst
        self._rate = rate_per_minute
        self._decrease = decrease
        self._increase = increase_per_success
        self._cooldown = cooldown
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()
        self._blocked_until = -math.inf
        self._last_penalty = -math.inf
        self._waiters: dict[Hashable, _Waiter] = {}
        self._last_grant: dict[Hashable, float] = {}
        self._seq = itertools.count()
        self._pump: asyncio.Task[None] | None = None
        self.method = UPDATE  # for log lines; EditBudgets names each budget's method

    # ---- state, for metrics and tests ----------------------------------------------------------

    @property
    def rate_per_minute(self) -> float:
        return self._rate

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def available(self) -> float:
        """Edits that may start now without waiting (0 while blocked after a 429)."""
        now = self._clock()
        if now < self._blocked_until:
            return 0.0
        self._refill(now)
        return max(0.0, self._tokens)

    def blocked_for(self) -> float:
        """Seconds until edits are allowed again after a 429 (0 when not blocked)."""
        return max(0.0, self._blocked_until - self._clock())

    def expected_wait(self, extra: int = 0) -> float:
        """About how long a request made now would wait: behind those already waiting and `extra`
        calls promised elsewhere (e.g. the stops that open streams will need)."""
        blocked = self.blocked_for()
        tokens = max(1.0, self._tokens) if blocked else self.available()  # one call when a block ends
        short = len(self._waiters) + extra + 1 - tokens
        return blocked + max(0.0, short) * 60.0 / self._rate

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
                self._tokens = min(float(self.burst), self._tokens + 1.0)  # granted but unused
            raise

    def promote(self, stream: Hashable) -> None:
        """Turn this stream's pending request into a final one (the reply just ended)."""
        waiter = self._waiters.get(stream)
        if waiter is not None:
            waiter.final = True

    def penalize(self, retry_after: float) -> None:
        """Slack answered 429: block every edit for `retry_after` seconds and cut the rate once."""
        now = self._clock()
        already_blocked = now < self._blocked_until  # 429s of edits that were in flight together
        self._blocked_until = max(self._blocked_until, now + max(retry_after, 0.0))
        self._tokens, self._updated = 1.0, self._blocked_until  # one edit when the block ends
        self._last_penalty = now
        if not already_blocked:
            self._rate = max(self.min_rate, self._rate * self._decrease)
            logger.warning(
                "%s rate limited; pausing it %.1fs, rate now %.1f/min", self.method, retry_after, self._rate
            )

    def reward(self) -> None:
        """Slack accepted an edit: after a quiet period, raise the rate a little, up to the configured one."""
        if self._clock() - self._last_penalty >= self._cooldown:
            self._rate = min(self.max_rate, self._rate + self._increase)

    def forget(self, stream: Hashable) -> None:
        """The stream ended: drop its fairness record."""
        self._last_grant.pop(stream, None)

    # ---- internals -----------------------------------------------------------------------------

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self._rate / 60.0)
            self._updated = now

    def _wait_time(self) -> float:
        now = self._clock()
        if now < self._blocked_until:
            return self._blocked_until - now
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) * 60.0 / self._rate

    def _next_stream(self) -> Hashable:
        def order(stream: Hashable) -> tuple[bool, float, int]:
            waiter = self._waiters[stream]
            return (not waiter.final, self._last_grant.get(stream, -math.inf), waiter.seq)

        return min(self._waiters, key=order)

    async def _serve(self) -> None:
        try:
            while self._waiters:
                delay = self._wait_time()
                if delay > 0:
                    await self._sleep(delay)
                    continue
                stream = self._next_stream()
                waiter = self._waiters.pop(stream)
                if waiter.future.done():
                    continue  # its task was cancelled while we chose it
                self._tokens -= 1.0
                self._last_grant[stream] = self._clock()
                waiter.future.set_result(None)
        finally:
            self._pump = None


class EditBudgets:
    """One `EditBudget` per (workspace, method), created on first use.

    `rate_per_minute` and `burst` configure `chat.update` (the edit budget, as before); `methods`
    the others (default `DEFAULT_METHOD_RATES`).
    """

    def __init__(
        self,
        rate_per_minute: float = DEFAULT_RATE_PER_MINUTE,
        burst: int = DEFAULT_BURST,
        *,
        methods: Mapping[str, MethodRate] | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._rates = {**DEFAULT_METHOD_RATES, **(methods or {}), UPDATE: MethodRate(rate_per_minute, burst)}
        self._clock, self._sleep = clock, sleep
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
            budget = EditBudget(rate.per_minute, rate.burst, clock=self._clock, sleep=self._sleep)
            budget.method = method
            self._budgets[team_id, method] = budget
        return budget
