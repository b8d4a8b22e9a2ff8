"""What sharing the Slack budgets on PostgreSQL costs, and what it buys: `python -m bench.budget_cost`.

Two measurements, printed as a table (numbers quoted in bot/slack/shared_budget.py):

- cost: statements, wall and CPU time per acquired call on one budget that never has to wait, for
  the chosen design (a row per call, one autocommit statement on a pool without pre-ping), the same
  with a pre-ping on every checkout, the statement inside a transaction (BEGIN ... COMMIT, as a
  session sends it) and leases of k calls per statement.
- effect: 429s from the fake Slack's per-workspace chat.update bucket when 12 streams edit as fast
  as their budget lets them, with one budget instance, and with three (as three replicas would
  have) that are unshared (today), shared by a row per call, or shared by leases.

`drive` is also what tests/test_shared_budget.py runs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import httpx
from sqlalchemy import event, make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from bot.slack.edit_budget import Bucket, BucketSource, EditBudgets, Urgent, always_urgent
from bot.slack.shared_budget import SharedBucket, SharedBudgets, Unavailable, budget_engine
from bot.storage import slack_budgets
from bot.storage.db import create_engine
from bot.storage.migrate import upgrade_head
from bot.storage.slack_budgets import Limits, Slot
from tests.fakes.slack_api import FakeSlackApi
from tests.fakes.slack_rules import RateLimit

ADMIN_DB = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"  # where a scratch database is created
TEAM = "T1"
LEASE_TERM = 1.0  # seconds a leased call stays usable after its slot


@dataclass(frozen=True)
class Load:
    ok: int
    rate_limited: int
    seconds: float


async def drive(
    instances: list[EditBudgets],
    slack: FakeSlackApi,
    *,
    streams: int = 12,
    seconds: float = 5.0,
    interval: float = 0.05,
    team: str = TEAM,
) -> Load:
    """`streams` replies spread over the instances edit chat.update through their budgets for
    `seconds`, each as often as `interval` and its budget allow; a 429 penalizes that instance."""
    counts = collections.Counter[str]()
    start = time.monotonic()
    headers = {"Authorization": f"Bearer {next(iter(slack.tokens))}"}

    async def stream(budgets: EditBudgets, key: str, client: httpx.AsyncClient) -> None:
        budget = budgets.for_team(team)
        ts = slack.add_message("C1", "…", user=slack.bot_user_id, bot_id=slack.bot_id)
        while time.monotonic() - start < seconds:
            await budget.acquire(key)
            reply = await client.post("chat.update", json={"channel": "C1", "ts": ts, "text": key})
            if reply.status_code == 429:
                counts["429"] += 1
                budget.penalize(float(reply.headers.get("Retry-After", "1")))
            else:
                counts["ok"] += 1
                budget.reward()
            await asyncio.sleep(interval)
        budget.forget(key)

    async with httpx.AsyncClient(base_url=slack.api_url, headers=headers) as client:
        await asyncio.gather(
            *(stream(instances[i % len(instances)], f"s{i}", client) for i in range(streams))
        )
    return Load(counts["ok"], counts["429"], time.monotonic() - start)


class LeaseSource:
    """The alternative measured against a row per call: a replica books `k` consecutive calls with
    one statement and spends them locally; calls it does not use in time are lost to everyone."""

    def __init__(self, store: SharedBudgets, k: int) -> None:
        self._store, self._k = store, k

    def bucket(self, team: str, method: str, limits: Limits) -> Bucket:
        return LeaseBucket(self._store, team, method, limits, self._k)


class LeaseBucket(SharedBucket):
    def __init__(self, store: SharedBudgets, team: str, method: str, limits: Limits, k: int) -> None:
        super().__init__(store, team, method, limits, clock=time.monotonic, sleep=asyncio.sleep)
        self._k = k
        self._slots: collections.deque[float] = collections.deque()

    async def take(self, urgent: Urgent = always_urgent) -> None:  # noqa: ARG002 - the lease design has no priority
        while True:
            now = time.monotonic()
            if now < self._blocked_until:
                self._slots.clear()  # a 429: the lease is void
                await asyncio.sleep(self._blocked_until - now)
                continue
            while self._slots and self._slots[0] < now - LEASE_TERM:
                self._slots.popleft()  # booked but unused in time: lost
            if self._slots:
                slot = self._slots.popleft()
                if slot > now:
                    await asyncio.sleep(slot - now)
                return
            rewards, self._rewards = self._rewards, 0
            try:
                booked = await self._store.run(self._book(rewards))
            except Unavailable:
                await asyncio.sleep(0.1)
                continue
            self._learn(booked)
            # The i-th booked call goes when the bucket (burst and all) has room for it.
            now, interval, k, burst = (
                time.monotonic(),
                60.0 / booked.rate_per_minute,
                self._k,
                self._limits.burst,
            )
            for i in range(k):
                self._slots.append(now + max(booked.wait, booked.full_in - (k - i + burst - 1) * interval))

    def _book(self, rewards: int) -> Callable[[AsyncConnection], Awaitable[Slot]]:
        team, method, limits, k = self._team, self._method, self._limits, self._k
        return lambda conn: slack_budgets.reserve(conn, team, method, limits, rewards, k)


class StatementCounter:
    """Statements SQLAlchemy sends on an engine (BEGIN/COMMIT are counted by PostgreSQL instead)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.count = 0
        event.listen(engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: object) -> None:
        self.count += 1


async def cost(url: str, design: str, calls: int = 2000) -> dict[str, float]:
    """Per acquired call on a budget that never waits: statements, wall and CPU time."""
    # "row-pre-ping": SQLAlchemy's pre-ping on every checkout, which the main engine did until it
    # pinged only idle connections (bot.storage.idle_ping); the budgets' own (budget_engine) never.
    if design == "row-pre-ping":
        engine = create_async_engine(url, pool_pre_ping=True)
    elif design == "row-in-transaction":
        engine = create_engine(url)
    else:
        engine = budget_engine(create_engine(url))
    counter = StatementCounter(engine)
    store = SharedBudgets(engine)
    limits = Limits(1e9, 1e9, 10**9, 0.0, 0.7, 30.0)  # never waits: only the statement's cost
    team = f"COST{time.time_ns() % 10**9}"
    try:
        async with engine.connect():
            pass  # the pool's first connection is not the cost of a call
        counter.count = 0
        wall, cpu = time.perf_counter(), time.process_time()
        if design == "row-in-transaction":
            for _ in range(calls):
                async with engine.begin() as conn:
                    await slack_budgets.reserve(conn, team, "chat.update", limits, 0)
        else:
            leases = design.startswith("lease-")
            source: BucketSource = LeaseSource(store, int(design.split("-")[1])) if leases else store
            bucket = source.bucket(team, "chat.update", limits)
            for _ in range(calls):
                await bucket.take()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        statements = counter.count
    finally:
        await store.aclose()
        await engine.dispose()
    return {
        "statements": statements / calls,
        "wall_ms": wall * 1000 / calls,
        "cpu_ms": cpu * 1000 / calls,
    }


@asynccontextmanager
async def instances(
    url: str, design: str, count: int, rate: float, burst: int, counters: list[StatementCounter] | None = None
) -> AsyncIterator[list[EditBudgets]]:
    """`count` budget instances, each on its own engine as a replica's would be."""
    async with AsyncExitStack() as stack:
        made: list[EditBudgets] = []
        for _ in range(count):
            if design == "local":
                made.append(EditBudgets(rate, burst))
                continue
            engine = budget_engine(create_engine(url))
            stack.push_async_callback(engine.dispose)
            if counters is not None:
                counters.append(StatementCounter(engine))
            store = SharedBudgets(engine)
            stack.push_async_callback(store.aclose)
            source: BucketSource = store if design == "row" else LeaseSource(store, int(design.split("-")[1]))
            made.append(EditBudgets(rate, burst, shared=source))
        yield made


async def clear(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM slack_budgets"))
    finally:
        await engine.dispose()


async def effect(
    url: str, design: str, count: int, *, slack_limit: RateLimit, rate: float, seconds: float
) -> tuple[Load, int]:
    """The load's outcome and the statements its budgets sent."""
    await clear(url)
    counters: list[StatementCounter] = []
    async with FakeSlackApi() as slack:
        slack.limits["chat.update"] = slack_limit
        async with instances(url, design, count, rate, slack_limit.burst, counters) as made:
            load = await drive(made, slack, seconds=seconds)
    return load, sum(c.count for c in counters)


async def main(url: str, seconds: float, calls: int) -> None:
    print(f"cost per acquired call ({calls} calls, one budget that never waits)")
    print(f"{'design':<22}{'statements':>11}{'wall ms':>9}{'cpu ms':>8}")
    for design in ("row", "row-pre-ping", "row-in-transaction", "lease-5", "lease-20"):
        c = await cost(url, design, calls)
        print(f"{design:<22}{c['statements']:>11.2f}{c['wall_ms']:>9.3f}{c['cpu_ms']:>8.3f}")
    limit = RateLimit(300, burst=5)  # Slack's Tier 3 sped up 6x so that seconds show minutes
    runs: list[tuple[str, int, float]] = [
        ("local", 1, 270.0),
        ("local", 3, 270.0),
        ("row", 3, 270.0),
        ("lease-5", 3, 270.0),
        ("local", 1, 600.0),
        ("local", 3, 600.0),
        ("row", 3, 600.0),
        ("lease-5", 3, 600.0),
    ]
    print(
        f"\n429s: 12 streams for {seconds:.0f} s against a bucket of {limit.per_minute:.0f}/min, "
        f"burst {limit.burst}"
    )
    print(
        f"{'design':<10}{'instances':>10}{'rate/min':>9}{'edits':>7}{'429s':>6}{'edits/s':>9}{'stmts/edit':>11}"
    )
    for design, count, rate in runs:
        load, statements = await effect(url, design, count, slack_limit=limit, rate=rate, seconds=seconds)
        per_second, per_edit = load.ok / load.seconds, statements / max(1, load.ok + load.rate_limited)
        print(
            f"{design:<10}{count:>10}{rate:>9.0f}{load.ok:>7}{load.rate_limited:>6}{per_second:>9.1f}{per_edit:>11.2f}"
        )


@asynccontextmanager
async def scratch_database(admin_url: str) -> AsyncIterator[str]:
    """A new database at the newest migration, dropped afterwards."""
    name = f"bench_budgets_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        await upgrade_head(url)
        yield url
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def _run(args: argparse.Namespace) -> None:
    if args.db:
        await main(args.db, args.seconds, args.calls)
        return
    async with scratch_database(args.admin_db) as url:
        await main(url, args.seconds, args.calls)


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--db", help="a PostgreSQL database at the newest migration (default: a scratch one)")
    parser.add_argument("--admin-db", default=ADMIN_DB, help="where the scratch database is created")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--calls", type=int, default=2000)
    asyncio.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    cli()
