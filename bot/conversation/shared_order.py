"""Per-conversation ordering across replicas that share one PostgreSQL database.

A turn's place is a row (bot.storage.turn_places) inserted in the claim's transaction while the
conversation's row is locked: claims of one thread serialize, so the places' ids follow admission
order whichever replica admitted them. A turn runs once no live place before it is left. A place
stays live while its replica renews its lease (every replica renews all its places in one statement
every `renew_every` seconds); a replica that died stops renewing, and its places block nobody once
their lease has run out (but see hand-off below).

Leaving deletes the place and signals it (NOTIFY, in the same statement); the replicas' SignalHubs
wake the turns waiting in that line, which look again at once (this replica's without the round
trip). A slow poll is the safety net, and while the hub is disconnected the waiters poll every
`offline_poll` seconds instead.

Hand-off: a place carries what its turn needs (bot.conversation.handoff) until the turn has stored
its reply (cleared in that transaction); the turn's start is marked in the same statement as its last
look at the line, or, for a turn first in line (which starts without a look), in the one clearing its
record. A place whose lease ran out while it still carries the record is an orphan: its
replica died (kill -9) before the turn stored anything, or drained (it expires its waiting places
and signals TURNS_HANDED_OFF). Any replica adopts orphans (every `renew_every`
seconds, on that signal, or when one of its turns waits behind one), keeping their ids so each
thread's order holds, and runs their turns through its `Turns` (the adopter). Orphans hold up the
turns after them until adopted. A mark and an adoption of one place exclude each other under its
row lock, and so do the clearing of the record and an adoption (the clearing is conditional on the
holder): a turn runs once (a replica that adopts its own late place leaves it to its waiting
ticket). Cost per turn: the record rides on the place's insert; a turn first in line starts without
a look at the line, its start marked with the clearing of its record (a turn that waited is marked by
its last look); clearing the record rides in the reply's first transaction; a placeholder posted
before that (edit streaming) is noted in the record by one more statement, so an adopting replica
answers in it. The places of a dead replica whose turns stored their replies hold up the turns
after them until recovery has finished those replies with the interruption note
(bot.slack.recovery), so the note comes before the next answers. Then they block nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Hashable, Mapping
from datetime import timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.lease import PLACE_LEASE_SECONDS, PLACE_RENEW_SECONDS, RETRY_SECONDS
from bot.conversation.ordering import HandedOff
from bot.storage import turn_places as repo
from bot.storage.db import UNAVAILABLE, error_reason

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0  # a signal lost in flight costs at most this much waiting
OFFLINE_POLL_SECONDS = 1.0  # while the listener is away
# Places of dead replicas stop blocking when their lease ends; their rows go once this old.
PURGE_AFTER = timedelta(minutes=10)
ORPHAN_POLL_SECONDS = 0.25  # a turn behind an orphan looks again this soon: someone adopts it
# A turn behind a dead replica's reply waiting for recovery looks again this soon (recovery also
# signals TURN_ENDED for the reply's conversation when it commits).
UNRECOVERED_POLL_SECONDS = 1.0
ADOPT_AT_ONCE = 50  # orphans one replica adopts per look


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
        self.handed_off = False  # the place is another replica's (or an orphan's) now

    @property
    def is_next(self) -> bool:
        """No live place was before this one when it was taken."""
        return self._first

    async def take(
        self, session: AsyncSession, conversation_id: int, record: Mapping[str, object] | None = None
    ) -> None:
        line = self._line
        self.place_id, self._first = await repo.take_place(
            session, conversation_id, line.holder, line.lease, record
        )
        self.conversation_id = conversation_id
        line._held[self.place_id] = self

    async def wait(self) -> None:
        """Wait until every earlier live place of the thread has gone, and mark the place started (a
        turn first in line: at `begin_reply`); cancelling gives up the place; HandedOff when another
        replica runs the turn."""
        if self.left:
            raise RuntimeError("this turn already left its thread's line")
        if self._first and not self._line.draining and not self.handed_off:
            # Nothing was before it at its claim, and nothing can come before it later (ids follow
            # admission order): it starts without a look at the line. Its start is marked when it
            # stores its reply (`begin_reply`), which is also what keeps an adopted place from
            # running twice. In bench (d) every turn is first: one transaction less each.
            self.running = True
            return
        try:
            await self._line._wait_turn(self)
        except asyncio.CancelledError:
            self.leave()
            raise
        self.running = True

    async def begin_reply(self, session: AsyncSession) -> None:
        if self.place_id is not None and not await repo.begin_reply(
            session, self.place_id, self._line.holder
        ):
            self.handed_off = True
            raise HandedOff

    async def note_placeholder(self, ts: str) -> bool:
        if self.place_id is None or self.handed_off:
            return False
        try:
            async with self._line._sessions.begin() as session:
                return await repo.note_placeholder(session, self.place_id, self._line.holder, ts)
        except UNAVAILABLE as exc:
            log.warning("could not note the placeholder showing a turn: %s", error_reason(exc))
            return False

    async def last_in_line(self, session: AsyncSession) -> bool:
        if self.handed_off:
            return False  # its place is another replica's now, whose turn runs in it
        if self.place_id is None or self.conversation_id is None:
            return True
        # Its place goes here too, not only in the background (`leave`): two refusals of the thread
        # at once, each under the thread row's lock in turn, must agree which of them was last.
        await repo.leave_place(session, self.place_id, self._line.holder)
        return not await repo.others_in_line(session, self.conversation_id, self.place_id)

    def leave(self) -> None:
        if not self.left:
            self.left = True
            self._line._leave(self)

    def _signal(self) -> None:
        self._wake.set()


Adopter = Callable[[SharedTicket, object], None]
"""Runs an adopted turn (in a task of its own): its ticket, bound to the adopted place, and the
place's record (bot.conversation.handoff). Unreadable record: `ticket.leave()`."""


class SharedTurnOrder:
    """The `Line` of a replica among several: one per process, with its own holder id."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        signals: Signals,
        *,
        lease: float = PLACE_LEASE_SECONDS,
        renew_every: float = PLACE_RENEW_SECONDS,
        poll: float = POLL_SECONDS,
        offline_poll: float = OFFLINE_POLL_SECONDS,
        holder: str | None = None,
    ) -> None:
        self._sessions = sessions
        self._signals = signals
        self.holder = holder or uuid.uuid4().hex
        self.lease = timedelta(seconds=lease)
        self._renew_every = renew_every
        self._poll, self._offline_poll = poll, offline_poll
        self._tickets: set[SharedTicket] = set()  # entered and not left
        self._held: dict[int, SharedTicket] = {}  # place id -> ticket, renewed until left
        self._undeleted: set[int] = set()  # left while the database was away: deleted later
        self._leaving: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._adopter: Adopter | None = None
        self._sweep: asyncio.Task[None] | None = None
        self._sweep_again = False
        self.draining = False
        signals.subscribe(repo.TURN_ENDED, self._turn_ended)
        signals.subscribe(repo.TURNS_HANDED_OFF, self._handed_off)

    def adopt_with(self, adopter: Adopter) -> None:
        """From now on this replica adopts orphaned turns and runs them with `adopter`."""
        self._adopter = adopter
        self._start_renewing()

    def _start_renewing(self) -> None:
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_forever(), name="turn-places")

    def enter(self, key: Hashable) -> SharedTicket:
        self._start_renewing()
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
        self.draining = True
        if self._leaving:
            await asyncio.wait(set(self._leaving), timeout=5)
        for task in (self._renewer, self._sweep):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def hand_off_waiting(self) -> int:
        """Draining: give every turn not started yet to the other replicas at once (one statement),
        and adopt none from now on; turns that reach their line later hand themselves off."""
        self.draining = True
        waiting = [t for t in self._tickets if not t.running and t.place_id is not None]
        return len(await self._hand_off(waiting))

    async def _hand_off(self, tickets: list[SharedTicket]) -> list[SharedTicket]:
        by_place = {t.place_id: t for t in tickets if t.place_id is not None and not t.handed_off}
        try:
            async with self._sessions.begin() as session:
                given = await repo.hand_off(session, self.holder, list(by_place))
        except UNAVAILABLE as exc:
            # They wait on here; the drain's grace period ends them as before.
            log.warning("could not hand the waiting turns off: %s", error_reason(exc))
            return []
        handed = [by_place[place_id] for place_id in given]
        for ticket in handed:
            self._lost(ticket)
            ticket._signal()
        if handed:
            log.info("handed %d waiting turns to the other replicas", len(handed))
        return handed

    def _lost(self, ticket: SharedTicket) -> None:
        ticket.handed_off = True
        if ticket.place_id is not None:
            self._held.pop(ticket.place_id, None)  # not renewed: another replica's, or an orphan

    async def _wait_turn(self, ticket: SharedTicket) -> None:
        assert ticket.conversation_id is not None
        assert ticket.place_id is not None
        while True:
            ticket._wake.clear()
            if not ticket.handed_off and self.draining:
                await self._hand_off([ticket])  # a turn admitted as the drain began
            if ticket.handed_off:
                raise HandedOff
            wait = self._offline_poll
            try:
                async with self._sessions.begin() as session:
                    check = await repo.check_line(
                        session, ticket.conversation_id, ticket.place_id, self.holder, self.lease
                    )
            except UNAVAILABLE as exc:
                log.warning("could not check a turn's place in line: %s", error_reason(exc))
                if ticket.is_next:
                    # Nothing was before it at its claim, and nobody adopts while the database is
                    # away: it runs as it always did, unmarked (the outage's note, or its answer).
                    return
            else:
                if check.started:
                    return
                if check.lost:
                    self._lost(ticket)  # adopted: this replica was taken for dead
                    raise HandedOff
                # Wake when the last earlier place's lease could run out (its holder may be dead).
                wait = check.wait + 0.05
                if check.unrecovered:
                    # Held up by recovery whatever else is ahead: its commit signals, this is the
                    # net (`check.wait` is 0 when nothing live is ahead: no 50 ms polling).
                    wait = UNRECOVERED_POLL_SECONDS
                if check.orphans:
                    self._request_sweep()
                    wait = ORPHAN_POLL_SECONDS
            # ... or when signalled, or at the next poll.
            poll = self._poll if self._signals.connected else self._offline_poll
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ticket._wake.wait(), min(poll, wait))

    def _handed_off(self, payload: str | None) -> None:  # noqa: ARG002
        """A draining replica gave its waiting turns up (None: signals may have been missed)."""
        self._request_sweep()

    def _request_sweep(self) -> None:
        if self._adopter is None or self.draining:
            return
        if self._sweep is not None and not self._sweep.done():
            self._sweep_again = True
            return
        self._sweep = asyncio.create_task(self._adopt_orphans(), name="turn-adoption")

    async def _adopt_orphans(self) -> None:
        self._sweep_again = True
        while self._sweep_again and not self.draining:
            self._sweep_again = False
            try:
                async with self._sessions.begin() as session:
                    adopted = await repo.adopt_places(session, self.holder, self.lease, ADOPT_AT_ONCE)
            except UNAVAILABLE as exc:
                log.warning("could not look for orphaned turns: %s", error_reason(exc))
                return
            if len(adopted) == ADOPT_AT_ONCE:
                self._sweep_again = True
            for place in adopted:
                self._run_adopted(place)

    def _run_adopted(self, place: repo.AdoptedPlace) -> None:
        assert self._adopter is not None
        if place.id in self._held:
            # This replica's own turn, its renewal late (a stall, the database away): the adoption
            # renewed it, and its ticket runs it here. A ticket that gave up its place is not held.
            return
        log.info("adopted a waiting turn of a replica that died or drained", extra={"place": place.id})
        ticket = SharedTicket(self, place.conversation_id)
        ticket.place_id, ticket.conversation_id = place.id, place.conversation_id
        self._tickets.add(ticket)
        self._held[place.id] = ticket
        self._adopter(ticket, place.arrival)
        self._wake_line(place.conversation_id)  # turns behind it: it is live again

    def _leave(self, ticket: SharedTicket) -> None:
        self._tickets.discard(ticket)
        if ticket.place_id is None or ticket.handed_off:
            return  # never took a place (its claim failed first), or it is not this replica's
        self._held.pop(ticket.place_id, None)
        task = asyncio.create_task(self._delete(ticket.place_id, ticket.conversation_id), name="turn-leave")
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    async def _delete(self, place_id: int, conversation_id: int | None) -> None:
        try:
            async with self._sessions.begin() as session:
                await repo.leave_place(session, place_id, self.holder)
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
                        await repo.leave_place(session, place_id, self.holder)
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
            self._request_sweep()  # orphans of replicas that died
