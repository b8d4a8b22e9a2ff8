"""Arrivals first: while messages are being admitted, replies already answering give way at their steps.

One process answers every reply on one event loop. In a burst (bench (d): 500 mentions in 10 s) the
replies already answering (their streams' chunks, checkpoints, edits) and the messages still waiting
for their claim and their thinking status compete for that loop, and for SQLite's one write lock,
whose holder waits for a turn of the loop between its statements. asyncio serves them all in turn,
so a person waits to see that the bot is working behind everyone else's streaming. So a reply gives
way at its steps (before it starts, and before each piece of text it shows) while any message is
between its event and its status, for at most AT_MOST a step and GIVE_WAY_PER_REPLY in all: a
burst delays answers a little, and people see at once that their message was taken. When nothing
arrives, a step costs one integer test.

Measured in bench pairs, each order, with it and without (SQLite): (d) status p50 3.8 -> 2.8 s and
3.5 -> 2.6 s, p99 19.4 -> 11.6 s and 16.3 -> 11.1 s, CPU per reply 0.048 -> 0.043 s (a loaded
machine); 0.15 -> 0.07 s and 0.08 -> 0.07 s p50, p99 1.3 -> 0.2 s and 0.5 -> 0.3 s (a quiet one).
On PostgreSQL, four (d) pairs split two and two (p50 0.96-2.2 s either way).
"""

from __future__ import annotations

import asyncio
import contextlib

AT_MOST = 0.25  # seconds a reply's step waits for arrivals to clear
GIVE_WAY_PER_REPLY = 2.0  # seconds a reply's stream gives way in all, however long the burst


class Arriving:
    """One message between its event and its first sign in Slack; `shown` once it is there (or the
    message was refused, or waits in its thread's line): idempotent."""

    def __init__(self, arrivals: Arrivals) -> None:
        self._arrivals: Arrivals | None = arrivals

    def shown(self) -> None:
        if self._arrivals is not None:
            self._arrivals.left()
            self._arrivals = None


class Arrivals:
    """The messages of this process being admitted now; replies `give_way` to them."""

    def __init__(self, at_most: float = AT_MOST) -> None:
        self._count = 0
        self._clear = asyncio.Event()
        self._clear.set()
        self._at_most = at_most

    @property
    def waiting(self) -> int:
        return self._count

    def arrive(self) -> Arriving:
        self._count += 1
        self._clear.clear()
        return Arriving(self)

    def left(self) -> None:
        self._count -= 1
        if self._count == 0:
            self._clear.set()

    async def give_way(self) -> float:
        """Wait while messages are being admitted, at most AT_MOST; at once when none is. Returns
        the seconds waited."""
        if self._count == 0:
            return 0.0
        loop = asyncio.get_running_loop()
        began = loop.time()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._at_most):
                await self._clear.wait()
        return loop.time() - began
