"""Per-conversation ordering across replicas that share one PostgreSQL database.

A turn's place is a row (bot.storage.turn_places) inserted in the claim's transaction while the
conversation's row is locked: claims of one thread serialize, so the places' ids follow admission
order whichever replica admitted them. A turn runs once no live place before it is left. A place
stays live while its replica renews its lease (every replica renews all its places in one statement
every `renew_every` seconds); a replica that died stops renewing, and its places block nobody once
their lease has run out.

Leaving deletes the place and signals it (NOTIFY, in the same statement); the replicas' SignalHubs
wake the turns waiting in that line, which look again at once (this replica's without the round
trip). A slow poll is the safety net, and while the hub is disconnected the waiters poll every
`offline_poll` seconds instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Hashable
from datetime import timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.lease import LEASE_SECONDS, RENEW_SECONDS, RETRY_SECONDS
from bot.storage import turn_places as repo
from bot.storage.db import UNAVAILABLE, error_reason

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0  # a signal lost in flight costs at most this much waiting
OFFLINE_POLL_SECONDS = 1.0  # while the listener is away
# Places of dead replicas stop blocking when their lease ends; their rows go once this old.
PURGE_AFTER = timedelta(minutes=10)


class Signals(Protocol):
    """The process's LISTEN connection (bot.storage.signals.SignalHub)."""

    @property
    def connected(self) -> bool: ...

    def subscribe(self, channel: str, callback: Callable[[str | None], None]) -> None: ...


class SharedTicket:
    """One turn's place in a line kept in the database; `leave()` on every path (idempotent)."""

    def __init__(self, line: SharedTurnOrder, key: Hashable) -> None:
        self._line, self.key = line, key
        self.place_id: int | None = None
        self.conversation_id: int | None = None
        self._first = False
        self._wake = asyncio.Event()
        self.running = False
        self.left = False

    @property
    def is_next(self) -> bool:
        """No live place was before this one when it was taken."""
        return self._first

    async def take(self, session: AsyncSession, conversation_id: int) -> None:
        line = self._line
        self.place_id, self._first = await repo.take_place(session, conversation_id, line.holder, line.lease)
        self.conversation_id = conversation_id
        line._held[self.place_id] = self

    async def wait(self) -> None:
        """Wait until every earlier live place of the thread has gone; cancelling gives up the place."""
        if self.left:
            raise RuntimeError("this turn already left its thread's line")
        try:
            if not self._first:
                await self._line._wait_turn(self)
        except asyncio.CancelledError:
            self.leave()
            raise
        self.running = True

    def leave(self) -> None:
        if not self.left:
            self.left = True
            self._line._leave(self)

    def _signal(self) -> None:
        self._wake.set()


class SharedTurnOrder:
    """The `Line` of a replica among several: one per process, with its own holder id."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        signals: Signals,
        *,
        lease: float = LEASE_SECONDS,
        renew_every: float = RENEW_SECONDS,
        poll: float = POLL_SECONDS,
        offline_poll: float = OFFLINE_POLL_SECONDS,
    ) -> None:
        self._sessions = sessions
        self._signals = signals
        self.holder = uuid.uuid4().hex
        self.lease = timedelta(seconds=lease)
        self._renew_every = renew_every
        self._poll, self._offline_poll = poll, offline_poll
        self._tickets: set[SharedTicket] = set()  # entered and not left
        self._held: dict[int, SharedTicket] = {}  # place id -> ticket, renewed until left
        self._undeleted: set[int] = set()  # left while the database was away: deleted later
        self._leaving: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        signals.subscribe(repo.TURN_ENDED, self._turn_ended)

    def enter(self, key: Hashable) -> SharedTicket:
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_forever(), name="turn-places")
        ticket = SharedTicket(self, key)
        self._tickets.add(ticket)
        return ticket

    @property
    def running(self) -> int:
        return sum(1 for t in self._tickets if t.running)

    @property
    def waiting(self) -> int:
        return len(self._tickets) - self.running

    async def aclose(self) -> None:
        """At shutdown, after the turns ended: let the last places go, stop renewing."""
        if self._leaving:
            await asyncio.wait(set(self._leaving), timeout=5)
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    async def _wait_turn(self, ticket: SharedTicket) -> None:
        assert ticket.conversation_id is not None
        assert ticket.place_id is not None
        while True:
            ticket._wake.clear()
            try:
                async with self._sessions.begin() as session:
                    blocked = await repo.blocked_for(session, ticket.conversation_id, ticket.place_id)
            except UNAVAILABLE as exc:
                log.warning("could not check a turn's place in line: %s", error_reason(exc))
                blocked = self._offline_poll
            if blocked is None:
                return
            # Wake when signalled, when the last earlier place's lease could run out (its holder may
            # be dead), or at the next poll.
            poll = self._poll if self._signals.connected else self._offline_poll
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ticket._wake.wait(), min(poll, blocked + 0.05))

    def _leave(self, ticket: SharedTicket) -> None:
        self._tickets.discard(ticket)
        if ticket.place_id is None:
            return  # the claim never took a place (its transaction failed first)
        self._held.pop(ticket.place_id, None)
        task = asyncio.create_task(self._delete(ticket.place_id, ticket.conversation_id), name="turn-leave")
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    async def _delete(self, place_id: int, conversation_id: int | None) -> None:
        try:
            async with self._sessions.begin() as session:
                await repo.leave_place(session, place_id)
        except UNAVAILABLE as exc:
            # Not renewed any more: it stops blocking when its lease runs out, or goes on a retry.
            log.warning("could not leave a turn's place: %s", error_reason(exc))
            self._undeleted.add(place_id)
            return
        self._wake_line(conversation_id)  # this replica's waiters need no round trip

    def _turn_ended(self, payload: str | None) -> None:
        """A turn left a line somewhere (None: signals may have been missed)."""
        if payload is None:
            self._wake_line(None)
            return
        with contextlib.suppress(ValueError):
            self._wake_line(int(payload))

    def _wake_line(self, conversation_id: int | None) -> None:
        for ticket in self._tickets:
            if not ticket.running and (conversation_id is None or ticket.conversation_id == conversation_id):
                ticket._signal()

    async def _renew_forever(self) -> None:
        purged_at = 0.0
        loop = asyncio.get_running_loop()
        pause = self._renew_every
        while True:
            await asyncio.sleep(pause)
            pause = min(RETRY_SECONDS, self._renew_every)  # after a failure: soon, within the lease
            try:
                async with self._sessions.begin() as session:
                    await repo.renew_places(session, self.holder, list(self._held), self.lease)
                    retried = set(self._undeleted)
                    for place_id in retried:
                        await repo.leave_place(session, place_id)
                    if loop.time() - purged_at > PURGE_AFTER.total_seconds():
                        await repo.purge_dead_places(session, PURGE_AFTER)
                        purged_at = loop.time()
                self._undeleted -= retried
            except UNAVAILABLE as exc:
                log.warning("could not renew the turns' places: %s", error_reason(exc))
            except Exception:  # a bug here must not end the renewals: every place would expire
                log.exception("renewing the turns' places failed")
            else:
                pause = self._renew_every
