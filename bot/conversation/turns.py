"""One arrival from admission to its reply's end: the same path for Slack and the terminal.

`Turns.handle` admits the message (bot.conversation.admission), tells the person when it is refused,
waits for the thread's earlier turns, opens the reply, builds the `Turn` and runs it through the
conversation service, then ends the claim, the place in line and the credit reservation on every
path. What is shown where (placeholders, ephemeral notes, status lines) is the surface's business:
the domain calls it through the `Surface` port.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from bot.conversation.admission import Admission, Admitted, Arrival, People, Refused
from bot.conversation.handoff import Handoff
from bot.conversation.ordering import HandedOff, Place
from bot.conversation.ports import ReplyNotShown, ReplySink
from bot.conversation.priority import Arriving
from bot.conversation.service import (
    NOTE_DATABASE,
    NOTE_INTERRUPTED,
    NOTE_TAKEN_OVER,
    ConversationService,
    Turn,
    TurnOutcome,
)
from bot.conversation.stop import StopHandle
from bot.llm.types import ChatMessage
from bot.storage.db import UNAVAILABLE, error_reason
from bot.storage.models import MessageStatus

log = logging.getLogger(__name__)

NOTE_FAILED = "Something went wrong while answering. Please try again."


class OpenableSink(ReplySink, Protocol):
    async def start(self) -> None:
        """Show that an answer is coming (a placeholder); raises ReplyNotShown when it cannot."""
        ...

    async def release(self) -> None:
        """End without touching the message: another replica answers in this reply's placeholder."""
        ...


class Surface(People, Protocol):
    """Where a message came from and its reply goes (a Slack workspace, a terminal)."""

    def reply_to(self, arrival: Arrival, placeholder: str | None = None) -> OpenableSink:
        """The reply's sink; `placeholder`: one already showing it (an adopted turn's), to answer in."""
        ...

    async def prompt_text(self, arrival: Arrival) -> str:
        """The message as the model reads it (mentions as names, links spelled out)."""
        ...

    async def thread_context(self, arrival: Arrival, reply_refs: Sequence[str]) -> Sequence[ChatMessage]:
        """Earlier messages of a thread the bot joins mid-way, never its own reply (`reply_refs`)."""
        ...

    async def show_waiting(self, arrival: Arrival) -> None:
        """Show that the message waits for the answer before it to finish."""
        ...

    async def situation(self, arrival: Arrival, question: str, *, new_thread: bool) -> Sequence[str]:
        """System-prompt lines about where the person is (e.g. the channel they view); the surface may
        also title a new conversation from its first `question` here."""
        ...

    async def tell(self, arrival: Arrival, note: str, *, in_thread: bool) -> None:
        """A short note to the person: only them (`in_thread` False), or a line in the thread."""
        ...


class RunningReplies(Protocol):
    """The replies streaming now, for the surface's stop controls (bot.slack.stop.RunningTurns)."""

    def started(self, arrival: Arrival, reply: ReplySink, stop: StopHandle) -> None:
        """`reply` answers `arrival` from now on; `stop` ends it early."""
        ...

    def ended(self, stop: StopHandle) -> None:
        """The reply of `stop` has ended: there is nothing left to stop."""
        ...


class TurnObserver(Protocol):
    """What the process counts about turns (bot.metrics.Metrics)."""

    def event_ignored(self, reason: str) -> None: ...

    def turn_ended(self, outcome: TurnOutcome, seconds: float) -> None: ...


class RefusalNotices(Protocol):
    """Whether a person may be told why they were refused now (at most once an hour, say)."""

    async def may_tell(self, arrival: Arrival) -> bool: ...


class _Unobserved:
    def event_ignored(self, reason: str) -> None:
        pass

    def turn_ended(self, outcome: TurnOutcome, seconds: float) -> None:
        pass


class _AlwaysTell:
    async def may_tell(self, arrival: Arrival) -> bool:  # noqa: ARG002
        return True


class Turns:
    """Takes arrivals to replies; one instance per process (its `order` is the process's lines)."""

    def __init__(
        self,
        admission: Admission,
        service: ConversationService,
        *,
        observer: TurnObserver | None = None,
        notices: RefusalNotices | None = None,
        running: RunningReplies | None = None,
    ) -> None:
        self.admission = admission
        self._service = service
        self._observer: TurnObserver = observer or _Unobserved()
        self._notices: RefusalNotices = notices or _AlwaysTell()
        self._running = running
        self.active: set[asyncio.Task[Any]] = set()  # what shutdown waits for
        self.streaming = 0  # replies started and not yet ended

    def ignored(self, reason: str) -> None:
        """Count an event the surface did not even make an arrival of (a bot's message, an edit)."""
        self._observer.event_ignored(reason)

    async def handle(self, arrival: Arrival, surface: Surface) -> TurnOutcome | None:
        """Admit and answer one message; None when it was refused or its reply could not start."""
        task = asyncio.current_task()
        if task is not None:
            self.active.add(task)
        try:
            return await self._handle(arrival, surface)
        finally:
            if task is not None:
                self.active.discard(task)

    async def resume(self, handoff: Handoff, ticket: Place, surface: Surface) -> TurnOutcome | None:
        """Answer a turn another replica admitted and handed off (bot.conversation.handoff): `ticket`
        is its place, adopted by this replica; the claim is not taken again."""
        task = asyncio.current_task()
        if task is not None:
            self.active.add(task)
        arrival = handoff.arrival
        try:
            started = time.monotonic()
            try:
                admitted = await self.admission.readmit(arrival, handoff.new_thread, ticket, surface)
            except UNAVAILABLE as exc:
                log.warning("database unavailable while resuming a handed-off turn: %s", error_reason(exc))
                if arrival.addressed:
                    await surface.tell(arrival, NOTE_DATABASE, in_thread=True)
                return None
            return await self._run(arrival, admitted, surface, started, placeholder=handoff.placeholder)
        finally:
            if task is not None:
                self.active.discard(task)

    async def _handle(self, arrival: Arrival, surface: Surface) -> TurnOutcome | None:
        started = time.monotonic()
        arriving = self._service.arrivals.arrive()  # replies give way until its status shows
        try:
            try:
                admitted = await self.admission.admit(arrival, surface)
            except UNAVAILABLE as exc:
                log.warning("database unavailable while admitting an event: %s", error_reason(exc))
                if arrival.addressed:
                    await surface.tell(arrival, NOTE_DATABASE, in_thread=True)
                return None
            return await self._run(arrival, admitted, surface, started, arriving)
        finally:
            arriving.shown()

    async def _run(
        self,
        arrival: Arrival,
        admitted: Admitted | Refused,
        surface: Surface,
        started: float,
        arriving: Arriving | None = None,
        *,
        placeholder: str | None = None,
    ) -> TurnOutcome | None:
        if isinstance(admitted, Refused):
            if arriving is not None:
                arriving.shown()
            self._observer.event_ignored(admitted.reason)
            await self._explain(arrival, admitted, surface)
            return None
        outcome: TurnOutcome | None = None
        try:
            outcome = await self._take_turn(admitted, surface, arriving, placeholder)
        finally:
            admitted.ticket.leave()
            await _end_reservation(admitted, outcome)
        if outcome is not None:
            self._observer.turn_ended(outcome, time.monotonic() - started)
        return outcome

    async def _explain(self, arrival: Arrival, refused: Refused, surface: Surface) -> None:
        if refused.notice is None:
            return
        if not refused.in_thread:
            try:
                if not await self._notices.may_tell(arrival):
                    return
            except UNAVAILABLE as exc:
                log.warning("could not check when the person was last told: %s", error_reason(exc))
                return  # rather silence than a note on every attempt
        await surface.tell(arrival, refused.notice, in_thread=refused.in_thread)

    async def _take_turn(
        self, admitted: Admitted, surface: Surface, arriving: Arriving | None, placeholder: str | None
    ) -> TurnOutcome | None:
        """Wait for the thread's earlier turns, then answer; None when the reply could not start.
        `placeholder`: an adopted turn's, posted by the replica that died, to answer in."""
        arrival = admitted.arrival
        reply = surface.reply_to(arrival, placeholder)
        try:
            if not admitted.ticket.is_next:
                await surface.show_waiting(arrival)
                if arriving is not None:
                    arriving.shown()  # it waits in line: no longer arriving
            await admitted.ticket.wait()
        except HandedOff:
            # Another replica answers it (this one drains, or was taken for dead): no note here.
            log.info("a waiting turn was handed to another replica")
            return None
        except asyncio.CancelledError:
            # Shutdown while queued: the person learns that this message will not be answered.
            await reply.fail(NOTE_INTERRUPTED)
            raise
        try:
            await reply.start()
        except ReplyNotShown:
            log.error("could not show the reply; the event is released for a redelivery")
            await self.admission.release(arrival)
            return None
        finally:
            if arriving is not None:
                arriving.shown()
        stop = StopHandle()
        if self._running is not None:
            self._running.started(arrival, reply, stop)
        self.streaming += 1
        try:
            # A placeholder before the reply is stored: should this replica die before storing it,
            # the replica adopting the turn answers in it instead of leaving "Thinking…".
            posted = reply.refs[0] if reply.refs and reply.refs[0] != placeholder else None
            if posted is not None and await admitted.ticket.note_placeholder(posted):
                placeholder = posted
            await self._service.arrivals.give_way()
            return await self._answer(admitted, reply, surface, stop)
        except HandedOff:
            # This replica stalled past its lease before storing the reply; another one adopted the turn.
            if placeholder is not None and placeholder in reply.refs[:1]:
                await reply.release()  # it answers in this very placeholder: leave it alone
            else:
                await reply.fail(NOTE_TAKEN_OVER)
            return TurnOutcome(MessageStatus.ERROR, "", None, None, "handed off")
        except BaseException as exc:
            # Cancelled (shutdown) or a bug: never leave a placeholder.
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("a turn failed before its reply ended")
            await reply.fail(NOTE_INTERRUPTED if isinstance(exc, asyncio.CancelledError) else NOTE_FAILED)
            raise
        finally:
            self.streaming -= 1
            if self._running is not None:
                self._running.ended(stop)

    async def _answer(
        self, admitted: Admitted, reply: OpenableSink, surface: Surface, stop: StopHandle
    ) -> TurnOutcome:
        arrival = admitted.arrival
        backfill: Sequence[ChatMessage] = ()
        if admitted.new_thread and arrival.mid_thread:
            backfill = await surface.thread_context(arrival, reply.refs)
        text = await surface.prompt_text(arrival)
        context = await surface.situation(arrival, text, new_thread=admitted.new_thread)
        candidate = admitted.candidate
        turn = Turn(
            arrival.key,
            arrival.kind,
            text,
            arrival.user_id,
            backfill,
            candidate.channel,
            context,
            candidate.person,
            admitted.reservation,
            admitted.ticket,
            admitted.opened,
        )
        return await self._service.reply(turn, reply, stop)


async def _end_reservation(admitted: Admitted, outcome: TurnOutcome | None) -> None:
    """Settle what the turn cost, or release the credits when it never called the model; this runs
    while a cancellation goes on, so it is shielded from it."""
    reservation = admitted.reservation
    if reservation is None:
        return
    ending = reservation.settle(outcome) if outcome is not None else reservation.release()
    task = asyncio.ensure_future(ending)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise
    except Exception:
        # The quota stage owns its errors; a failed settle must not turn an answered turn into a crash.
        log.exception("could not end the turn's credit reservation")
