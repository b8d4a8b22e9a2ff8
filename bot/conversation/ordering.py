"""Per-conversation ordering: turns of one thread run one at a time, oldest Slack message first."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass
class _Queue:
    busy: bool = False
    waiters: list[tuple[str, int, asyncio.Future[None]]] = field(default_factory=list)


class TurnOrder:
    """An async lock per key whose waiters are served by their order key (e.g. message ts).

    Events can reach the listener slightly out of order (retries, concurrent HTTP requests), so
    among the turns waiting for one conversation the earliest message goes first.
    """

    def __init__(self) -> None:
        self._queues: dict[Hashable, _Queue] = {}
        self._counter = 0

    @asynccontextmanager
    async def hold(self, key: Hashable, order: str) -> AsyncIterator[None]:
        queue = self._queues.setdefault(key, _Queue())
        if queue.busy or queue.waiters:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._counter += 1
            entry = (order, self._counter, future)
            heapq.heappush(queue.waiters, entry)
            try:
                await future
            except BaseException:
                if future.done() and not future.cancelled():
                    self._release(key, queue)  # we were handed the lock while being cancelled
                elif entry in queue.waiters:  # a release may have popped it already
                    queue.waiters.remove(entry)
                    heapq.heapify(queue.waiters)
                    self._drop_if_idle(key, queue)
                else:
                    self._drop_if_idle(key, queue)
                raise
        queue.busy = True
        try:
            yield
        finally:
            self._release(key, queue)

    def _release(self, key: Hashable, queue: _Queue) -> None:
        while queue.waiters:
            _, _, future = heapq.heappop(queue.waiters)
            if not future.done():
                future.set_result(None)  # ownership passes directly: busy stays True
                return
        queue.busy = False
        self._drop_if_idle(key, queue)

    def _drop_if_idle(self, key: Hashable, queue: _Queue) -> None:
        if not queue.busy and not queue.waiters:
            self._queues.pop(key, None)
