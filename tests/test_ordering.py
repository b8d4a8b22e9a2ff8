"""Per-thread ordering of turns: one at a time, earliest message first, cancellation stays clean."""

from __future__ import annotations

import asyncio

import pytest

from bot.conversation.ordering import TurnOrder


async def test_waiting_turns_run_in_message_order_not_arrival_order():
    order, ran = TurnOrder(), []
    holder_may_finish = asyncio.Event()

    async def turn(ts: str, wait: asyncio.Event | None = None) -> None:
        async with order.hold("thread", ts):
            ran.append(ts)
            if wait is not None:
                await wait.wait()

    first = asyncio.create_task(turn("1.0", holder_may_finish))
    await asyncio.sleep(0)
    later = [asyncio.create_task(turn(ts)) for ts in ("1.3", "1.1", "1.2")]
    await asyncio.sleep(0)
    holder_may_finish.set()
    await asyncio.gather(first, *later)
    assert ran == ["1.0", "1.1", "1.2", "1.3"]


async def test_a_waiter_cancelled_as_the_lock_is_released_raises_cancelled_not_value_error():
    order = TurnOrder()
    release = asyncio.Event()

    async def holder() -> None:
        async with order.hold("thread", "1.0"):
            await release.wait()

    async def waiter() -> None:
        async with order.hold("thread", "1.1"):
            pass

    held = asyncio.create_task(holder())
    await asyncio.sleep(0)
    cancelled_waiter = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    release.set()  # the holder hands the lock on in the same loop iteration...
    cancelled_waiter.cancel()  # ...as the waiter is cancelled
    await held
    with pytest.raises(asyncio.CancelledError):
        await cancelled_waiter
    async with asyncio.timeout(1):  # and the thread is free again
        async with order.hold("thread", "1.2"):
            pass
