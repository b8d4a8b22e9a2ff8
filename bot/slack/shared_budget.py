"""Slack budgets shared by every replica on one PostgreSQL database: a row per (workspace, method).

Why a row updated per call rather than leases, measured by bench/budget_cost.py on this 2-core
machine (local PostgreSQL 15, shared with other work; absolute times move, ratios hold):

    cost per acquired call          statements   wall ms   cpu ms
    row, own pool, autocommit          1.00        0.48      0.28   <- chosen
    row with a pre-ping per checkout   1.00        0.73      0.42
    row inside BEGIN ... COMMIT        1.00        0.63      0.36
    lease of 5 calls per statement     0.20        0.09      0.05
    lease of 20                        0.05        0.03      0.01

    12 streams, 6 s, fake Slack at 300/min burst 5   edits   429s   statements/edit
    budget 270/min: 1 process                          43      0       -
                    3 replicas, each its own           43     12       -
                    3 replicas, a row per call         43      0      1.95
                    3 replicas, leases of 5            43      0      0.28
    budget 600/min (must adapt): 1 process             40      2       -
                    3 replicas, each its own           42     17       -
                    3 replicas, a row per call         40      2      2.24
                    3 replicas, leases of 5            39      4      0.47

A row per call draws exactly as many 429s as one process; leases save statements but lose calls
booked by a replica whose streams ended (fewer edits) and spend booked calls during a pause another
replica saw (more 429s). The saving is worth nothing here: Slack allows a workspace at most about
13 budgeted calls a second over every method, so one to two statements of under a millisecond per
call (a reservation, and a re-check of the pause when the call had to wait) are lost in a Slack call
of 50-300 ms. A row per call also queues replicas first come, first served (GCRA: the statement
hands out the next slot; nobody polls).

- A 429 seen by one replica pauses that workspace's method on all: the pause is written to the row
  at once (in the background; this process stops at once), a replica already sleeping for a slot
  checks the row again before its call, and every later reservation starts after the pause.
- The adaptive rate lives in the row: a pause cuts it once for everyone; each replica credits the
  calls Slack accepted with its next reservation, so success raises it as one process's would.
- Which stream goes next stays this process's choice (EditBudget: finals first, oldest first), and
  finals go first across replicas too: a replica with only interim calls waiting takes a slot only
  when one is free now, so the slots another replica's finals queued for are not shared with them.
  In bench (f) a survivor's interim edits took half of each workspace's chat.update slots while the
  other survivor's queue of a dead replica's interrupted notes waited.
- Database unreachable (or slower than `TIMEOUT`): each budget falls back to a local bucket of 1/N
  of the rate and burst, N the replicas seen alive recently (a heartbeat row each), with one log
  line, and a background probe returns to the shared rows when the database answers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bot.slack.edit_budget import Clock, LocalBucket, Sleep, Urgent, always_urgent
from bot.storage import slack_budgets
from bot.storage.db import UNAVAILABLE, error_reason
from bot.storage.slack_budgets import Limits, Slot

log = logging.getLogger(__name__)

T = TypeVar("T")

TIMEOUT = 1.5  # seconds a budget statement may take before this replica falls back to its share
PROBE_EVERY = 5.0  # seconds between tries of the database while it is unreachable
HEARTBEAT_EVERY = 15.0
LIVE_WITHIN = 60.0  # a replica that drew on a budget this recently counts towards N
SPARE_FOR = 1.0  # seconds a slot taken but not used may still serve the next call
RETRY_INTERIM = 1.0  # seconds at most between an interim call's tries while no slot is free


class Unavailable(Exception):
    """The shared rows cannot be reached now: use the local share."""


class SharedBudgets:
    """The database side of every shared bucket of this process: connection, outage, heartbeat."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        replica_id: str | None = None,
        timeout: float = TIMEOUT,
        probe_every: float = PROBE_EVERY,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        # One statement is its own transaction: no BEGIN/COMMIT round trips, the row lock is brief.
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.replica_id = replica_id or f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._timeout, self._probe_every = timeout, probe_every
        self._clock, self._sleep = clock, sleep
        self.replicas = 1  # last count of live replicas, for the share taken during an outage
        self.outages = 0  # counts outages: each bucket starts a fresh local share for each
        self.down = False
        self._last_beat = -math.inf
        self._tasks: set[asyncio.Task[Any]] = set()

    def bucket(self, team: str, method: str, limits: Limits) -> SharedBucket:
        return SharedBucket(self, team, method, limits, clock=self._clock, sleep=self._sleep)

    async def run(self, statement: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """One budget statement, or Unavailable (and the local shares) when the database fails it."""
        if self.down:
            raise Unavailable
        for attempt in (1, 2):
            try:
                result = await self._within_timeout(statement)
                break
            except UNAVAILABLE as exc:  # TimeoutError is an OSError
                if attempt == 1 and getattr(exc, "connection_invalidated", False):
                    continue  # a pooled connection the server dropped (no pre-ping): once more, fresh
                self._went_down(exc)
                raise Unavailable from exc
        if self._clock() - self._last_beat >= HEARTBEAT_EVERY:
            self._last_beat = self._clock()
            self.spawn(self._beat())
        return result

    async def _within_timeout(self, statement: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """The statement's result, or TimeoutError after `timeout` seconds. A statement that
        overruns is cancelled in the background: closing its connection may wait on a database
        that no longer answers, and the reply waiting for this budget must not."""

        async def execute() -> T:
            async with self._engine.connect() as conn:
                return await statement(conn)

        task = asyncio.create_task(execute(), name="shared-budget-statement")
        try:
            return await asyncio.wait_for(asyncio.shield(task), self._timeout)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
            self._keep(task)
            raise

    async def beat(self) -> None:
        """Count the live replicas now (at start-up: N is known before any outage)."""
        self._last_beat = self._clock()
        await self._beat()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._keep(asyncio.create_task(work, name="shared-budget"))

    def _keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a background task until it ends, and read its outcome (no 'never retrieved')."""
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.debug("shared budget task ended: %s", error_reason(error))

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _went_down(self, exc: BaseException) -> None:
        if self.down:
            return
        self.down, self.outages = True, self.outages + 1
        log.warning(
            "Slack budgets: the database did not answer (%s); this replica spends 1/%d of every "
            "budget on its own (%d replicas seen lately) until it does",
            error_reason(exc) if not isinstance(exc, TimeoutError) else f"no answer in {self._timeout}s",
            self.replicas,
            self.replicas,
        )
        self.spawn(self._probe())

    async def _probe(self) -> None:
        while self.down:
            await self._sleep(self._probe_every)
            try:
                async with asyncio.timeout(self._timeout), self._engine.connect() as conn:
                    self.replicas = await slack_budgets.heartbeat(conn, self.replica_id, LIVE_WITHIN)
            except UNAVAILABLE:
                continue
            self.down = False
            log.info("Slack budgets: the database answers again; budgets are shared again")

    async def _beat(self) -> None:
        with suppress(Unavailable):
            self.replicas = await self.run(
                lambda conn: slack_budgets.heartbeat(conn, self.replica_id, LIVE_WITHIN)
            )


class SharedBucket:
    """One (workspace, method) budget drawn from its shared row; a local share during an outage.

    Between statements it remembers the row as last seen (in this process's clock), which is what
    `available()` and `blocked_for()` answer from: they must not wait for the database.
    """

    def __init__(
        self, store: SharedBudgets, team: str, method: str, limits: Limits, *, clock: Clock, sleep: Sleep
    ) -> None:
        self._store, self._team, self._method, self._limits = store, team, method, limits
        self._clock, self._sleep = clock, sleep
        self._rate = limits.max_rate
        self._blocked_until = -math.inf
        self._full_at = -math.inf  # when the shared bucket was last known to be full again
        self._rewards = 0  # calls Slack accepted, credited with the next reservation
        self._spare_until = -math.inf
        self._local: tuple[int, LocalBucket] | None = None  # (outage, its share)
        self._last_local = False
        self._reserving = False

    @property
    def rate_per_minute(self) -> float:
        return self._share().rate_per_minute if self._store.down else self._rate

    def available(self) -> float:
        if self._store.down:
            return self._share().available()
        now = self._clock()
        if now < self._blocked_until:
            return 0.0
        backlog = max(0.0, self._full_at - now) * self._rate / 60.0
        taking = 1.0 if self._reserving else 0.0  # a call is being taken: the row will say so
        return max(0.0, self._limits.burst - backlog - taking)

    def blocked_for(self) -> float:
        mine = max(0.0, self._blocked_until - self._clock())
        return max(mine, self._share().blocked_for()) if self._store.down else mine

    async def take(self, urgent: Urgent = always_urgent) -> None:
        while True:
            now = self._clock()
            if now < self._spare_until:
                self._spare_until = -math.inf
                return
            if now < self._blocked_until:
                await self._sleep(self._blocked_until - now)
                continue
            if self._store.down:
                self._last_local = True
                await self._share().take(urgent)
                return
            self._last_local = False
            rewards, self._rewards = self._rewards, 0
            self._reserving = True
            try:
                if not urgent():
                    taken = await self._store.run(self._take_if_free(rewards))
                    if taken is not None:
                        granted, slot = taken
                        self._learn(slot)
                        if granted:
                            return
                        self._rewards += rewards  # not credited: the row was left as it was
                        # Then again, at least every RETRY_INTERIM: a final may be waiting here by then.
                        self._reserving = False  # nothing is being taken while it waits
                        await self._sleep(min(slot.wait, RETRY_INTERIM))
                        continue
                slot = await self._store.run(self._reserve(rewards))
            except Unavailable:
                self._rewards += rewards
                continue
            finally:
                self._reserving = False
            self._learn(slot)
            if slot.wait <= 0:
                return
            await self._sleep(slot.wait)
            try:  # another replica's 429 while we slept voids our slot
                paused = await self._store.run(self._paused_for)
            except Unavailable:
                return  # the slot was ours: use it
            if paused <= 0:
                return
            self._blocked_until = max(self._blocked_until, self._clock() + paused)

    async def book(self, calls: int) -> list[float]:
        if self._store.down:
            return await self._share().book(calls)
        rewards, self._rewards = self._rewards, 0
        try:
            slot = await self._store.run(self._reserve(rewards, calls))
        except Unavailable:
            self._rewards += rewards
            return await self._share().book(calls)
        self._learn(slot)
        # The row's slots are consecutive: the first after `full_in - calls` intervals, less the burst.
        interval = 60.0 / slot.rate_per_minute
        start = slot.full_in - (calls + self._limits.burst - 1) * interval
        paused = max(slot.blocked_for, self._blocked_until - self._clock())  # a 429 not in the row yet
        return [max(paused, start + n * interval, 0.0) for n in range(calls)]

    def give_back(self) -> None:
        if self._last_local and self._local is not None:
            self._local[1].give_back()
        else:
            self._spare_until = self._clock() + SPARE_FOR

    def penalize(self, retry_after: float) -> None:
        now, retry_after = self._clock(), max(retry_after, 0.0)
        if self._store.down:
            self._share().penalize(retry_after)
        if now >= self._blocked_until:
            self._rate = max(self._limits.min_rate, self._rate * self._limits.decrease)  # as the row will
        if now + retry_after > self._blocked_until:
            self._blocked_until = now + retry_after
            self._spare_until = -math.inf
            if not self._store.down:
                self._store.spawn(self._share_pause(retry_after))

    def reward(self) -> None:
        self._rewards += 1
        if self._store.down:
            self._share().reward()

    # ---- internals -----------------------------------------------------------------------------

    def _take_if_free(self, rewards: int) -> Callable[[AsyncConnection], Awaitable[tuple[bool, Slot] | None]]:
        return lambda conn: slack_budgets.take_if_free(conn, self._team, self._method, self._limits, rewards)

    def _reserve(self, rewards: int, calls: int = 1) -> Callable[[AsyncConnection], Awaitable[Slot]]:
        return lambda conn: slack_budgets.reserve(
            conn, self._team, self._method, self._limits, rewards, calls=calls
        )

    async def _paused_for(self, conn: AsyncConnection) -> float:
        return await slack_budgets.paused_for(conn, self._team, self._method)

    async def _share_pause(self, retry_after: float) -> None:
        try:
            slot = await self._store.run(
                lambda conn: slack_budgets.pause(conn, self._team, self._method, self._limits, retry_after)
            )
        except Unavailable:
            return
        if slot is not None:
            self._learn(slot)

    def _learn(self, slot: Slot) -> None:
        now = self._clock()
        if slot.blocked_for > 0:
            self._blocked_until = max(self._blocked_until, now + slot.blocked_for)
        self._full_at = now + slot.full_in
        self._rate = slot.rate_per_minute

    def _share(self) -> LocalBucket:
        """This replica's share of the budget for the current outage: 1/N of the rate and burst."""
        outage = self._store.outages
        if self._local is None or self._local[0] != outage:
            n = max(1, self._store.replicas)
            limits = self._limits
            rate = max(self._rate / n, 1.0)
            burst = max(1, limits.burst // n)
            share = Limits(
                rate, min(limits.min_rate, rate), burst, limits.increase / n, limits.decrease, limits.cooldown
            )
            self._local = (outage, LocalBucket(share, clock=self._clock, sleep=self._sleep))
        return self._local[1]


def budget_engine(engine: AsyncEngine) -> AsyncEngine:
    """A small pool of the same database for the budget statements alone: no pre-ping, which
    doubled each call's cost (bench/budget_cost.py: 1.6 -> 0.8 ms), and short timeouts, so that a
    database that stops answering costs a reply at most `TIMEOUT` before the local shares."""
    connect_args = {"timeout": TIMEOUT, "command_timeout": TIMEOUT}
    # Up to 8 connections, kept once opened (see bot.storage.db.create_engine).
    return create_async_engine(
        engine.url, pool_size=8, max_overflow=0, pool_timeout=TIMEOUT, connect_args=connect_args
    )


@asynccontextmanager
async def shared_budgets(engine: AsyncEngine) -> AsyncIterator[SharedBudgets | None]:
    """The shared budgets on PostgreSQL; None on SQLite (one process: its own budgets suffice)."""
    if engine.dialect.name != "postgresql":
        yield None
        return
    own = budget_engine(engine)
    shared = SharedBudgets(own)
    await shared.beat()
    try:
        yield shared
    finally:
        await shared.aclose()
        await own.dispose()
