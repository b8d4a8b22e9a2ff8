"""Arrivals first: replies give way at their steps while messages are being admitted, never longer
than the bound, and not at all when nothing arrives."""

from __future__ import annotations

import asyncio
import time

from bot.conversation.priority import Arrivals


async def test_a_step_with_nothing_arriving_does_not_wait_or_yield():
    arrivals = Arrivals()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.create_task(other())
    await arrivals.give_way()
    assert ran == []  # it did not even yield to the loop
    await task


async def test_a_step_waits_until_every_arrival_is_shown():
    arrivals = Arrivals(at_most=5.0)
    first, second = arrivals.arrive(), arrivals.arrive()
    step = asyncio.create_task(arrivals.give_way())
    await asyncio.sleep(0.01)
    first.shown()
    first.shown()  # idempotent: the second arrival still counts
    await asyncio.sleep(0.01)
    assert not step.done() and arrivals.waiting == 1
    second.shown()
    await asyncio.wait_for(step, 1.0)
    assert arrivals.waiting == 0


async def test_a_step_waits_at_most_its_bound_while_arrivals_keep_coming():
    arrivals = Arrivals(at_most=0.05)
    arrivals.arrive()  # never shown (a stuck admission): replies still move on
    began = time.monotonic()
    await arrivals.give_way()
    assert 0.04 <= time.monotonic() - began < 1.0
