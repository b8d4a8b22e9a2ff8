"""Stopping an answer while it streams: the chat surface asks, the turn that streams it obeys.

A `StopHandle` belongs to one turn. The surface (a Stop button, Slack's agent-session stop) calls
`stop` once it has decided that the person may; the conversation service waits for it alongside the
model's stream and, when it comes first, closes the stream and keeps the answer so far.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class StopRequest:
    """Who stopped the answer, as the reply's note names them ("Stopped by <name>")."""

    by_name: str


class StopHandle:
    """One turn's stop switch: set at most once, by the first request; later ones change nothing."""

    def __init__(self) -> None:
        self._requested: StopRequest | None = None
        self._event = asyncio.Event()

    @property
    def requested(self) -> StopRequest | None:
        return self._requested

    def stop(self, request: StopRequest) -> bool:
        """Ask the turn to stop; False when it was already asked (the first asker is the one named)."""
        if self._requested is not None:
            return False
        self._requested = request
        self._event.set()
        return True

    async def wait(self) -> StopRequest:
        await self._event.wait()
        assert self._requested is not None
        return self._requested


class Stopped(Exception):
    """`unless_stopped` gave up on its work because the turn was stopped."""

    def __init__(self, request: StopRequest) -> None:
        super().__init__(f"stopped by {request.by_name}")
        self.request = request


async def unless_stopped(work: Awaitable[T], handle: StopHandle) -> T:
    """Run `work` until it ends or the handle is stopped; then cancel it and raise `Stopped`.

    Work that has already ended wins over a stop that comes at the same moment: a finished answer
    stays finished. Cancelling the caller cancels the work too.
    """
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(handle.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            # The work closes what it holds (the upstream connection) before we go on.
            await asyncio.wait({task})
    if task.cancelled() and handle.requested is not None:
        raise Stopped(handle.requested)
    return task.result()
