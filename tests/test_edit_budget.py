"""The shared per-workspace chat.update budget: fair turns, final edits first, adapting to 429s."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from bot.slack.edit_budget import EditBudget, EditBudgets


class FakeClock:
    """Virtual time: sleeping moves the clock instead of waiting."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def _budget(clock: FakeClock, rate: float = 60.0, burst: int = 5, **kwargs: Any) -> EditBudget:
    return EditBudget(rate, burst, clock=clock, sleep=clock.sleep, **kwargs)


async def _stream(budget: EditBudget, key: str, edits: int, grants: list[str]) -> None:
    for _ in range(edits):
        await budget.acquire(key)
        grants.append(key)


async def test_fifty_streams_get_their_edits_in_turn_not_in_bursts() -> None:
    clock = FakeClock()
    budget = _budget(clock)
    grants: list[str] = []
    keys = [f"stream-{i}" for i in range(50)]
    await asyncio.gather(*(_stream(budget, key, 4, grants) for key in keys))

    assert Counter(grants) == dict.fromkeys(keys, 4)
    for n in range(1, len(grants) + 1):
        counts = Counter(grants[:n])
        fewest = min(counts[key] for key in keys)
        assert max(counts.values()) - fewest <= 1, f"unfair after {n} grants"


async def test_the_rate_and_burst_bound_the_edits_per_minute() -> None:
    clock = FakeClock()
    budget = _budget(clock, rate=60.0, burst=5)
    start = clock.now
    grants: list[str] = []
    await asyncio.gather(*(_stream(budget, f"s{i}", 5, grants) for i in range(10)))
    # 50 edits: 5 from the burst, then one a second
    assert clock.now - start == pytest.approx(45.0, abs=0.5)


async def test_a_final_edit_goes_before_waiting_interim_edits() -> None:
    clock = FakeClock()
    budget = _budget(clock, burst=1)
    await budget.acquire("warm-up")  # the bucket is empty now
    order: list[str] = []

    async def wait(key: str, final: bool) -> None:
        await budget.acquire(key, final=final)
        order.append(key)

    interim = [asyncio.create_task(wait(f"interim-{i}", False)) for i in range(5)]
    await asyncio.sleep(0)
    final = asyncio.create_task(wait("ending", True))
    await asyncio.gather(*interim, final)
    assert order[0] == "ending"


async def test_promoting_a_waiting_stream_makes_its_edit_final() -> None:
    clock = FakeClock()
    budget = _budget(clock, burst=1)
    await budget.acquire("warm-up")
    order: list[str] = []

    async def wait(key: str) -> None:
        await budget.acquire(key)
        order.append(key)

    tasks = [asyncio.create_task(wait(f"s{i}")) for i in range(5)]
    await asyncio.sleep(0)
    budget.promote("s4")
    await asyncio.gather(*tasks)
    assert order[0] == "s4"


async def test_a_429_blocks_every_edit_until_retry_after_and_cuts_the_rate() -> None:
    clock = FakeClock()
    budget = _budget(clock, rate=45.0, burst=5)
    budget.penalize(3.0)
    assert budget.rate_per_minute == pytest.approx(45.0 * 0.7)
    assert budget.blocked_for() == pytest.approx(3.0)

    start = clock.now
    await budget.acquire("s1")
    assert clock.now - start >= 3.0
    await budget.acquire("s2")  # the bucket was emptied: the next edit waits for the cut rate
    assert clock.now - start >= 3.0 + 60.0 / (45.0 * 0.7) - 0.01


async def test_429s_of_edits_in_flight_together_cut_the_rate_once() -> None:
    clock = FakeClock()
    budget = _budget(clock, rate=45.0)
    for _ in range(5):
        budget.penalize(2.0)
    assert budget.rate_per_minute == pytest.approx(45.0 * 0.7)


async def test_repeated_429s_never_cut_below_the_floor() -> None:
    clock = FakeClock()
    budget = _budget(clock, rate=45.0, min_rate_per_minute=10.0)
    for _ in range(20):
        budget.penalize(1.0)
        clock.now += 1.5
    assert budget.rate_per_minute == pytest.approx(10.0)


async def test_sustained_success_slowly_restores_the_configured_rate_and_no_more() -> None:
    clock = FakeClock()
    budget = _budget(clock, rate=45.0, cooldown=30.0, increase_per_success=0.25)
    budget.penalize(1.0)
    budget.reward()
    assert budget.rate_per_minute == pytest.approx(31.5), "no recovery right after a 429"
    clock.now += 31.0
    budget.reward()
    assert budget.rate_per_minute == pytest.approx(31.75)
    for _ in range(200):
        budget.reward()
    assert budget.rate_per_minute == pytest.approx(45.0)


async def test_a_cancelled_waiter_is_skipped_and_its_turn_is_not_lost() -> None:
    clock = FakeClock()
    budget = _budget(clock, burst=1)
    await budget.acquire("warm-up")
    gone = asyncio.create_task(budget.acquire("gone"))
    stays = asyncio.create_task(budget.acquire("stays"))
    await asyncio.sleep(0)
    gone.cancel()
    start = clock.now
    await stays
    assert gone.cancelled()
    assert clock.now - start == pytest.approx(1.0, abs=0.01)
    assert budget.waiting == 0


async def test_one_stream_cannot_wait_twice_at_once() -> None:
    clock = FakeClock()
    budget = _budget(clock, burst=1)
    await budget.acquire("warm-up")
    first = asyncio.create_task(budget.acquire("s"))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await budget.acquire("s")
    await first


def test_each_workspace_has_its_own_budget() -> None:
    budgets = EditBudgets(rate_per_minute=30.0, burst=3)
    assert budgets.for_team("T1") is budgets.for_team("T1")
    assert budgets.for_team("T1") is not budgets.for_team("T2")
    assert budgets.for_team("T2").max_rate == 30.0


async def test_booked_calls_are_spent_at_once_and_later_calls_wait_behind_them() -> None:
    budget = EditBudget(600.0, 2)  # a call every 0.1 s, two at once
    start = time.monotonic()
    assert await budget.book(4) == pytest.approx([0.0, 0.0, 0.1, 0.2], abs=0.02)
    await budget.acquire("next")
    assert 0.27 <= time.monotonic() - start < 1.0  # behind the four (a loaded machine may add, never take)
