"""Slack budgets shared by replicas on one PostgreSQL database (bot.slack.shared_budget).

Three budget instances, each with its own engine, stand for three replicas; the fake Slack server's
per-workspace bucket answers 429 with Retry-After as Slack does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from bench.budget_cost import drive, instances
from bot.slack.edit_budget import UPDATE, EditBudget, EditBudgets
from bot.slack.shared_budget import PROBE_EVERY, TIMEOUT, SharedBudgets, budget_engine, shared_budgets
from bot.storage import slack_budgets
from bot.storage.db import create_engine
from bot.storage.slack_budgets import Limits
from tests.conftest import sqlite_url
from tests.fakes.slack_api import FakeSlackApi
from tests.fakes.slack_rules import RateLimit
from tests.fakes.tcp_proxy import TcpProxy

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

SLACK_LIMIT = RateLimit(300, burst=5)  # Slack's Tier 3 for chat.update, six times faster


@asynccontextmanager
async def replicas(
    url: str, count: int, *, timeout: float = TIMEOUT, probe_every: float = PROBE_EVERY
) -> AsyncIterator[list[SharedBudgets]]:
    """`count` processes' shared budgets on one database, each with its own pool."""
    async with AsyncExitStack() as stack:
        made = []
        for _ in range(count):
            engine = budget_engine(create_engine(url))
            stack.push_async_callback(engine.dispose)
            store = SharedBudgets(engine, timeout=timeout, probe_every=probe_every)
            stack.push_async_callback(store.aclose)
            await store.beat()
            made.append(store)
        yield made


async def _load(url: str, design: str, count: int, rate: float, seconds: float = 4.0) -> tuple[int, int]:
    async with FakeSlackApi() as slack:
        slack.limits[UPDATE] = SLACK_LIMIT
        # The budgets' burst one under Slack's, as their rate is under Slack's: at Slack's own burst the
        # shared design drew a single 429 in 1 run of 4 (one process: none), timing at the very edge.
        async with instances(url, design, count, rate, SLACK_LIMIT.burst - 1) as made:
            load = await drive(made, slack, seconds=seconds)
    return load.ok, load.rate_limited


async def test_three_replicas_sharing_the_budget_draw_no_more_429s_than_one(db_url: str) -> None:
    rate = 270.0  # under Slack's 300 a minute, as the configured 45 is under Tier 3's 50
    one_ok, one_429 = await _load(db_url, "local", 1, rate)
    shared_ok, shared_429 = await _load(db_url, "row", 3, rate)
    _, apart_429 = await _load(db_url, "local", 3, rate)

    assert shared_429 <= one_429, f"3 sharing replicas drew {shared_429} 429s, one process {one_429}"
    assert apart_429 > shared_429, "each replica on its own budget overruns Slack (the test can fail)"
    assert shared_ok >= 0.8 * one_ok, "sharing costs no throughput"


async def test_replicas_that_start_too_fast_learn_the_limit_together(db_url: str) -> None:
    rate = 600.0  # twice what the fake allows: the rate must adapt, pauses must be shared
    _, one_429 = await _load(db_url, "local", 1, rate)
    _, shared_429 = await _load(db_url, "row", 3, rate)
    _, apart_429 = await _load(db_url, "local", 3, rate)

    # The calls already in flight when the first 429 comes back draw 429s too, in one process as in
    # three; how many are in flight at that moment varies by one with the fake's latency.
    assert shared_429 <= one_429 + 1, f"3 sharing replicas drew {shared_429} 429s, one process {one_429}"
    assert apart_429 > 2 * shared_429


async def test_a_retry_after_seen_by_one_replica_pauses_the_method_on_the_others(db_url: str) -> None:
    async with replicas(db_url, 2) as (first, second):
        a = EditBudgets(60.0, 5, shared=first).for_team("T1")
        b = EditBudgets(60.0, 5, shared=second).for_team("T1")
        await a.acquire("a")
        a.penalize(1.5)
        await asyncio.sleep(0.2)  # the pause reaches the row in the background

        start = time.monotonic()
        await b.acquire("b")
        assert time.monotonic() - start >= 1.0, "the other replica waited out the Retry-After"
        assert b.rate_per_minute == pytest.approx(60.0 * 0.7), "and learned the cut rate"


async def test_a_replica_waiting_for_its_slot_holds_back_when_another_sees_a_429(db_url: str) -> None:
    async with replicas(db_url, 2) as (first, second):
        a = EditBudgets(60.0, 1, shared=first).for_team("T1")
        b = EditBudgets(60.0, 1, shared=second).for_team("T1")
        await b.acquire("b")  # the bucket is empty: b's next call is a second away
        start = time.monotonic()
        waiting = asyncio.create_task(b.acquire("b"))
        await asyncio.sleep(0.3)
        a.penalize(2.0)
        await waiting
        assert time.monotonic() - start >= 2.0, "the slot b had booked was void once a saw a 429"


async def test_final_calls_on_one_replica_go_before_interim_calls_on_another(db_url: str) -> None:
    """A dead replica's notes (finals) on one survivor are not slowed by the other's interim edits."""
    async with replicas(db_url, 2) as (first, second):
        notes = EditBudgets(120.0, 1, shared=first).for_team("T1")  # a slot every 0.5 s
        edits = EditBudgets(120.0, 1, shared=second).for_team("T1")
        granted: list[tuple[str, float]] = []

        async def call(budget: EditBudget, stream: str, *, final: bool) -> None:
            await budget.acquire(stream, final=final)
            granted.append((stream, time.monotonic()))

        finals = [asyncio.create_task(call(notes, f"note{n}", final=True)) for n in range(4)]
        await asyncio.sleep(0.1)  # the notes queue first; then a stream of interim edits asks
        interim = asyncio.create_task(call(edits, "edit", final=False))
        await asyncio.gather(*finals, interim)

    order = [stream for stream, _ in granted]
    assert order[-1] == "edit", f"the interim edit took a slot the queued notes needed: {order}"
    times = [at for _, at in granted]
    assert 1.6 <= times[-1] - times[0] < 3.5, "and the rate still holds"


async def test_calls_booked_at_once_go_before_any_replicas_later_call(db_url: str) -> None:
    """Recovery books a dead replica's notes in one statement: consecutive slots, ahead of all."""
    async with replicas(db_url, 2) as (first, second):
        notes = EditBudgets(120.0, 1, shared=first).for_team("T1")  # a slot every 0.5 s
        edits = EditBudgets(120.0, 1, shared=second).for_team("T1")
        start = time.monotonic()
        waits = await notes.book(4)
        assert waits == pytest.approx([0.0, 0.5, 1.0, 1.5], abs=0.2)
        await edits.acquire("a final edit", final=True)
        assert 1.8 <= time.monotonic() - start < 3.5, "it came after the four"


async def test_without_the_database_each_replica_spends_its_share_and_replies_are_not_blocked(
    db_url: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        replicas(db_url, 2),
        replicas(proxy.url_for(db_url), 1, timeout=0.5, probe_every=0.2) as (cut,),
    ):
        assert cut.replicas == 3
        budget = EditBudgets(90.0, 6, shared=cut).for_team("T1")
        await budget.acquire("s")
        proxy.black_hole()  # the database stops answering: no error, no reply

        with caplog.at_level(logging.WARNING, "bot.slack.shared_budget"):
            start = time.monotonic()
            for _ in range(2):
                await budget.acquire("s")
            assert time.monotonic() - start < 1.5, "at most one statement's timeout, then the local share"
        assert "this replica spends 1/3 of every budget on its own (3 replicas seen lately)" in caplog.text
        assert budget.rate_per_minute == pytest.approx(30.0), "a third of the rate while on its own"

        proxy.restore()
        await _until(lambda: not cut.down)
        await budget.acquire("s")
        assert budget.rate_per_minute == pytest.approx(90.0), "shared again"


async def test_sqlite_keeps_the_budgets_in_the_process(tmp_path: Path, db_url: str) -> None:  # noqa: ARG001
    engine = create_engine(sqlite_url(tmp_path / "bot.db"))
    try:
        async with shared_budgets(engine) as shared:
            assert shared is None
    finally:
        await engine.dispose()


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.05)


async def test_replicas_together_get_the_burst_at_once_then_the_rate(db_url: str) -> None:
    async with replicas(db_url, 3) as stores:
        budgets = [EditBudgets(120.0, 5, shared=store).for_team("T1") for store in stores]
        start = time.monotonic()
        for call in range(8):  # round robin over the replicas: 5 at once, then one each 0.5 s
            await budgets[call % 3].acquire(f"s{call}")
        assert time.monotonic() - start == pytest.approx(1.5, abs=0.25)


async def test_calls_slack_accepted_on_any_replica_raise_the_shared_rate_after_a_quiet_period(
    db_url: str,
) -> None:
    limits = Limits(max_rate=60.0, min_rate=10.0, burst=5, increase=0.25, decrease=0.7, cooldown=0.0)
    engine = budget_engine(create_engine(db_url))
    try:
        async with engine.connect() as conn:
            await slack_budgets.reserve(conn, "T1", UPDATE, limits, rewards=0)
            paused = await slack_budgets.pause(conn, "T1", UPDATE, limits, retry_after=0.0)
            assert paused is not None and paused.rate_per_minute == pytest.approx(42.0)
            raised = await slack_budgets.reserve(conn, "T1", UPDATE, limits, rewards=8)
            assert raised.rate_per_minute == pytest.approx(44.0)
            capped = await slack_budgets.reserve(conn, "T1", UPDATE, limits, rewards=1000)
            assert capped.rate_per_minute == pytest.approx(60.0), "never above the configured rate"
            await conn.commit()
    finally:
        await engine.dispose()
