"""Per-conversation ordering: turns of one thread run one at a time, in the order they were admitted.

A turn takes its place when its event is admitted (`TurnOrder.enter`, a plain call with no await, so
the place is decided at that moment) and runs once every earlier turn of the thread has left. Holding
the place from admission to the end of the reply is what keeps a thread's answers in order and each
answer's messages together, however long Slack takes to accept any one call.

`TurnOrder` is the line of one process (SQLite: one process); replicas sharing PostgreSQL use
bot.conversation.shared_order, which has the same shape (`Line`, `Place`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable, Mapping
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession


class HandedOff(Exception):
    """Raised by `Place.wait`: the turn's place went to another replica (this one drains, or was
    taken for dead), which answers the turn; this one must not."""


class Place(Protocol):
    """One turn's place in its thread's line; `leave()` it on every path (it is idempotent)."""

    running: bool

    @property
    def is_next(self) -> bool: ...

    async def take(
        self, session: AsyncSession, conversation_id: int, record: Mapping[str, object] | None = None
    ) -> None:
        """Record the place in the claim's transaction (the conversation's row exists by then), with
        what another replica needs to run the turn (bot.conversation.handoff)."""
        ...

    async def wait(self) -> None:
        """Until the turn may run; raises HandedOff when another replica runs it instead."""
        ...

    async def begin_reply(self, session: AsyncSession) -> None:
        """In the transaction that stores the turn's reply: from then on a dead replica's turn is
        finished with a note, not run again elsewhere. Raises HandedOff when another replica took
        the place meanwhile (this one was taken for dead): nothing is stored here."""
        ...

    async def note_placeholder(self, ts: str) -> bool:
        """A placeholder shows the turn before its reply is stored: a replica adopting the turn answers
        in it. True when noted; False when not (an unreachable database is logged, not raised)."""
        ...

    async def last_in_line(self, session: AsyncSession) -> bool:
        """Whether this turn, refused and left, was the last in its thread's line, its own place
        deleted in `session`'s transaction: a refused turn forgets its thread's empty conversation
        only then."""
        ...

    def leave(self) -> None: ...


class Line(Protocol):
    """The lines of turns of every conversation: `enter` with no await, in the claim's transaction."""

    def enter(self, key: Hashable) -> Place: ...

    @property
    def running(self) -> int: ...

    @property
    def waiting(self) -> int: ...


class TurnTicket:
    """One turn's place in its thread's line; `leave()` it on every path (it is idempotent)."""

    def __init__(self, order: TurnOrder, key: Hashable) -> None:
        self._order, self._key = order, key
        self._granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.running = False
        self.left = False

    @property
    def is_next(self) -> bool:
        """True when no earlier turn of the thread is still waiting or running."""
        return self._granted.done()

    async def take(
        self, session: AsyncSession, conversation_id: int, record: Mapping[str, object] | None = None
    ) -> None:
        """Nothing to record: this process's line is the whole line."""

    async def wait(self) -> None:
        """Wait until every earlier turn of the thread has left; cancelling gives up the place."""
        if self.left:
            raise RuntimeError("this turn already left its thread's line")
        try:
            await asyncio.shield(self._granted)
        except asyncio.CancelledError:
            self.leave()
            raise
        self.running = True

    async def begin_reply(self, session: AsyncSession) -> None:
        """Nothing to record: no other process adopts this line's turns."""

    async def note_placeholder(self, ts: str) -> bool:  # noqa: ARG002
        """Nothing to record: no other process adopts this line's turns."""
        return False

    async def last_in_line(self, session: AsyncSession) -> bool:  # noqa: ARG002
        """This process's line is the whole line."""
        return all(ticket is self for ticket in self._order._lines.get(self._key, ()))

    def leave(self) -> None:
        if not self.left:
            self.left = True
            self._order._leave(self)

    @property
    def key(self) -> Hashable:
        return self._key

    def _grant(self) -> None:
        if not self._granted.done():
            self._granted.set_result(None)


class TurnOrder:
    """The line of turns of each conversation key, first admitted first served; one per process."""

    def __init__(self) -> None:
        self._lines: dict[Hashable, deque[TurnTicket]] = {}

    def enter(self, key: Hashable) -> TurnTicket:
        ticket = TurnTicket(self, key)
        line = self._lines.setdefault(key, deque())
        line.append(ticket)
        if len(line) == 1:
            ticket._grant()
        return ticket

    @property
    def running(self) -> int:
        """Turns that hold their thread now."""
        return sum(1 for line in self._lines.values() if line[0].running)

    @property
    def waiting(self) -> int:
        """Turns admitted but not yet running: queued behind another turn, or about to start."""
        return sum(len(line) for line in self._lines.values()) - self.running

    def _leave(self, ticket: TurnTicket) -> None:
        line = self._lines[ticket.key]
        was_first = line[0] is ticket
        line.remove(ticket)
        if not line:
            del self._lines[ticket.key]
        elif was_first:
            line[0]._grant()
