"""Per-thread ordering of turns: one at a time, first admitted first, cancellation stays clean."""

from __future__ import annotations

import asyncio

import pytest

from bot.conversation.ordering import TurnOrder, TurnTicket


async def run_turn(ticket: TurnTicket, ran: list[str], name: str, until: asyncio.Event | None = None) -> None:
    try:
        await ticket.wait()
        ran.append(name)
        if until is not None:
            await until.wait()
    finally:
        ticket.leave()


async def test_turns_run_in_admission_order_whenever_they_start_waiting():
    order, ran = TurnOrder(), list[str]()
    first, second, third = (order.enter("thread") for _ in range(3))
    # The later turns start waiting before the first one does (a slow placeholder, say).
    tasks = [asyncio.create_task(run_turn(t, ran, n)) for t, n in ((third, "3"), (second, "2"))]
    await asyncio.sleep(0)
    assert ran == []
    await run_turn(first, ran, "1")
    await asyncio.gather(*tasks)
    assert ran == ["1", "2", "3"]


async def test_other_threads_do_not_wait():
    order, ran = TurnOrder(), list[str]()
    busy = asyncio.Event()
    holder = asyncio.create_task(run_turn(order.enter("a"), ran, "a", until=busy))
    await asyncio.sleep(0)
    other = order.enter("b")
    assert other.is_next
    await run_turn(other, ran, "b")
    busy.set()
    await holder
    assert ran == ["a", "b"]


async def test_the_counts_say_how_many_turns_wait_and_run():
    order = TurnOrder()
    first, second = order.enter("thread"), order.enter("thread")
    assert (order.running, order.waiting) == (0, 2)
    await first.wait()
    assert (order.running, order.waiting) == (1, 1)
    first.leave()
    assert (order.running, order.waiting) == (0, 1)
    await second.wait()
    second.leave()
    second.leave()  # leaving twice is harmless
    assert (order.running, order.waiting) == (0, 0)


async def test_a_waiter_cancelled_while_queued_gives_up_its_place():
    order, ran = TurnOrder(), list[str]()
    release = asyncio.Event()
    holder = asyncio.create_task(run_turn(order.enter("thread"), ran, "1", until=release))
    cancelled = asyncio.create_task(run_turn(order.enter("thread"), ran, "2"))
    last = order.enter("thread")
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert order.waiting == 1
    release.set()
    await holder
    async with asyncio.timeout(5):
        await run_turn(last, ran, "3")
    assert ran == ["1", "3"] and (order.running, order.waiting) == (0, 0)


async def test_a_waiter_cancelled_as_the_turn_is_handed_to_it_passes_the_turn_on():
    order, ran = TurnOrder(), list[str]()
    release = asyncio.Event()
    holder = asyncio.create_task(run_turn(order.enter("thread"), ran, "1", until=release))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(run_turn(order.enter("thread"), ran, "2"))
    await asyncio.sleep(0)
    release.set()  # the holder hands the turn on in the same loop iteration...
    await asyncio.sleep(0)
    cancelled.cancel()  # ...as the waiter is cancelled
    await holder
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    async with asyncio.timeout(5):  # and the thread is free again
        await run_turn(order.enter("thread"), ran, "3")
    assert ran[-1] == "3" and (order.running, order.waiting) == (0, 0)
