"""Admission: whether a person's message becomes a turn, as a pipeline of stages with no platform in it.

The stages, in order:

    thread check   may this message start or continue a conversation here (addressed to the bot, or
                   a follow-up in a thread it takes part in, as the channel's mode allows)
    dedupe claim   was it answered already (Slack's retries, the app_mention/message twins, replicas);
                   the claim also takes the turn's place in its thread's line
    access         may this person use the bot here (bot.conversation.access)
    quota          a reservation of credits for the call, settled or released when the turn ends;
                   far from every limit it is taken in the claim's transaction (one write per
                   admission) and given back if a policy then refuses
    turn order     the turn runs once every earlier turn of its thread has left (bot.conversation.turns)

A stage after the claim that refuses gives the claim back, so a redelivery that is allowed by then
(the person was let in, users.info answered again) is answered, and leaves its place in line; only
a refusal told in the thread (a quota reached) keeps its claim, so that line is posted once.

The place in line is taken at the claim, with no await in between, so turns are ordered by
when they were admitted, not by how fast any later call (to Slack, to the database) returns. With
replicas (bot.conversation.shared_order) the place is also a row written in the claim's transaction
while the conversation's row is locked, so claims of one thread on any replica are ordered too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.channel_settings import (
    DEFAULT_CHANNEL_SETTINGS,
    ChannelMode,
    ChannelSettings,
    ChannelSettingsSource,
)
from bot.conversation.handoff import to_record
from bot.conversation.keys import ConversationKey, ConversationKind
from bot.conversation.ordering import Line, Place
from bot.conversation.person import Person
from bot.conversation.ports import CallBudget
from bot.files.extract import Attachment
from bot.storage import conversations as repo
from bot.storage.db import UNAVAILABLE, error_reason
from bot.storage.dedupe import claim_event, release_event

if TYPE_CHECKING:
    from bot.conversation.service import TurnOutcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arrival:
    """A person's message that may become a turn, as the chat surface (Slack, the terminal) saw it."""

    event_id: str  # the same on redelivery: answered once
    key: ConversationKey
    kind: ConversationKind
    user_id: str
    message_ts: str  # with the channel, identifies the message across twin deliveries
    text: str  # as the surface wrote it (Slack markup); the surface makes it readable for the model
    addressed: bool  # mentioned, or a DM: may start a conversation
    mid_thread: bool = False  # a reply inside a thread: earlier messages may be context
    attachments: tuple[Attachment, ...] = ()  # files attached; the surface reads them into the text


@dataclass(frozen=True)
class Refused:
    """Not a turn. `notice` is told to the person (privately, at most once an hour for access);
    `in_thread` says it is a line in the thread instead (a quota reached)."""

    reason: str  # counted in slackbot_events_ignored
    notice: str | None = None
    in_thread: bool = False


@dataclass(frozen=True)
class Candidate:
    """What the stages after the claim decide on: the message, its asker and its channel's settings."""

    arrival: Arrival
    person: Person | None  # None: the surface could not say who this is right now
    channel: ChannelSettings


class Reservation(CallBudget, Protocol):
    """Credits held for one turn; `extend` before each further call, and exactly one of `settle` /
    `release` ends it."""

    async def settle(self, outcome: TurnOutcome) -> None:
        """The turn ran: keep what the API reported it cost."""
        ...

    async def release(self) -> None:
        """The turn ended without an outcome: it never called the model (refused later, could not
        start, cancelled while queued), or it was cancelled mid-call (the ledger holds that cost)."""
        ...


class AdmissionStage(Protocol):
    """A policy check after the claim (access lists, ...); None lets the message through."""

    @property
    def needs_person(self) -> bool:
        """Whether `check` reads `candidate.person` (a users.info look-up on Slack)."""
        ...

    async def check(self, candidate: Candidate) -> Refused | None: ...


class EarlyHold(Protocol):
    """A turn's credits held in its claim's transaction, so a turn far from every limit is admitted
    with one write (bench (c), 200 mentions at once: a hold in a transaction of its own queued for
    SQLite's write lock once more per turn before the reply could show)."""

    async def take(self, session: AsyncSession) -> Reservation | None:
        """In the claim's transaction: the hold, or None when a limit is nearer than far (the quota
        stage then reserves after the checks, as usual)."""
        ...

    def ended(self, *, committed: bool) -> None:
        """The claim's transaction ended (it was begun); called whether or not `take` was."""
        ...


class QuotaStage(Protocol):
    """Reserves the turn's estimated credits, or refuses when a hard limit is reached."""

    async def plan(self, arrival: Arrival, channel: ChannelSettings) -> EarlyHold | None:
        """Before the claim (its reads outside the claim's transaction): the hold the claim takes
        with it; None when no limit binds."""
        ...

    async def reserve(self, candidate: Candidate, *, near: bool = False) -> Reservation | Refused:
        """`near`: the hold with the claim was refused, a limit being near: check under the lock."""
        ...


class People(Protocol):
    """Who is asking: the surface's facts about a person (Slack: users.info), None when unknown now."""

    async def person(self, arrival: Arrival) -> Person | None: ...


class DefaultChannelSettings:
    """Every channel with the bot's defaults: where no channel has settings of its own."""

    async def for_channel(self, team_id: str, channel_id: str) -> ChannelSettings:  # noqa: ARG002
        return DEFAULT_CHANNEL_SETTINGS


@dataclass(frozen=True)
class Admitted:
    candidate: Candidate
    new_thread: bool  # the bot had no conversation for this thread before
    ticket: Place  # the turn's place in its thread's line; left when the turn ends
    reservation: Reservation | None = None
    # The conversation this claim inserted, first in its thread's line (None otherwise): it holds no
    # message before this turn's own, since every later turn of the thread waits behind this one.
    opened: int | None = None

    @property
    def arrival(self) -> Arrival:
        return self.candidate.arrival


class Admission:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        order: Line,
        *,
        thread_followups: bool,
        channels: ChannelSettingsSource | None = None,
        stages: Sequence[AdmissionStage] = (),
        quota: QuotaStage | None = None,
    ) -> None:
        self._sessions, self._order = sessions, order
        self._thread_followups = thread_followups
        self._channels: ChannelSettingsSource = channels or DefaultChannelSettings()
        self._stages = tuple(stages)
        self._quota = quota

    async def admit(self, arrival: Arrival, people: People) -> Admitted | Refused:
        """Raises the database's errors (UNAVAILABLE) from the claim; nothing is claimed then."""
        channel = await self._channels.for_channel(arrival.key.team_id, arrival.key.channel_id)
        early = await self._quota.plan(arrival, channel) if self._quota is not None else None
        claimed = await self._claim(arrival, channel, early)
        if isinstance(claimed, Refused):
            return claimed
        new_thread, ticket, held, opened = claimed
        near = early is not None and held is None
        try:
            vetted = await self._vet(arrival, channel, people, held, near=near)
        except BaseException:
            ticket.leave()
            if held is not None:
                await held.release()
            await self.release(arrival, refused_turn=ticket)
            raise
        if isinstance(vetted, Refused):
            try:
                return await self._give_back(arrival, ticket, vetted)  # its place first
            finally:
                if held is not None:
                    await held.release()
        candidate, reservation = vetted
        return Admitted(candidate, new_thread, ticket, reservation, opened)

    async def readmit(
        self, arrival: Arrival, new_thread: bool, ticket: Place, people: People
    ) -> Admitted | Refused:
        """A turn adopted from another replica (bot.conversation.handoff): its claim and place exist
        already; the stages after the claim run again here (the person's access may have changed, and
        the other replica's reservation went with it). Refused: the place is left, the claim kept
        (the event was acked: nothing is redelivered)."""
        try:
            channel = await self._channels.for_channel(arrival.key.team_id, arrival.key.channel_id)
            vetted = await self._vet(arrival, channel, people)
        except BaseException:
            ticket.leave()
            raise
        if isinstance(vetted, Refused):
            ticket.leave()
            return vetted
        candidate, reservation = vetted
        return Admitted(candidate, new_thread, ticket, reservation)

    async def _vet(
        self,
        arrival: Arrival,
        channel: ChannelSettings,
        people: People,
        held: Reservation | None = None,
        *,
        near: bool = False,
    ) -> tuple[Candidate, Reservation | None] | Refused:
        """The stages after the claim: the policies, then the credit reservation (`held` already
        with the claim: the caller releases it on a refusal; `near`: refused with the claim)."""
        # Only a policy needs to know who asks: without one, no look-up (users.info) is made.
        asks = any(stage.needs_person for stage in self._stages)
        candidate = Candidate(arrival, await people.person(arrival) if asks else None, channel)
        for stage in self._stages:
            refused = await stage.check(candidate)
            if refused is not None:
                return refused
        if self._quota is None or held is not None:
            return candidate, held
        reserved = await self._quota.reserve(candidate, near=near)
        if isinstance(reserved, Refused):
            return reserved
        return candidate, reserved

    async def _claim(
        self, arrival: Arrival, channel: ChannelSettings, early: EarlyHold | None
    ) -> tuple[bool, Place, Reservation | None, int | None] | Refused:
        """The thread check and the dedupe claim, in one transaction; the place in line and, far from
        every limit, the credits held with the claim."""
        key = arrival.key
        if channel.mode is ChannelMode.OFF and not arrival.addressed:
            return Refused("channel_off")  # the access stage tells those who address the bot
        ticket: Place | None = None
        held: Reservation | None = None
        committed = True
        try:
            async with self._sessions.begin() as session:
                # Locked (PostgreSQL) till commit: claims of one thread, on any replica, take their
                # places one after the other.
                existing = await repo.find_conversation_id(session, key, lock=True)
                if not arrival.addressed:
                    followups = self._thread_followups and channel.followups
                    if not followups or channel.mode is ChannelMode.MENTIONS:
                        return Refused("followups_off")
                    if existing is None:
                        return Refused("thread_not_joined")
                if not await claim_event(session, arrival.event_id, key.channel_id, arrival.message_ts):
                    return Refused("duplicate")
                ticket = self._order.enter(key)  # no await since the claim: admission order
                # A new thread's row: from here on follow-ups sent while this first reply is set up
                # are admitted too.
                conversation, opened = existing, None
                while conversation is None:  # one statement when the thread is new
                    # Another claim may have created it meanwhile (we then waited on its unique key,
                    # not its row): lock it now, or a third claim could take a place beside ours. If
                    # that claim was refused, its empty row may be gone again: insert once more.
                    opened = await repo.create_conversation(session, key, arrival.kind)
                    conversation = opened or await repo.find_conversation_id(session, key, lock=True)
                # The place across replicas, if shared, with what another replica needs to answer.
                await ticket.take(session, conversation, to_record(arrival, new_thread=existing is None))
                if not ticket.is_next:
                    # An earlier turn of the thread still waits or runs (its row deleted by a refusal
                    # meanwhile): it may store its messages in this row before this turn begins.
                    opened = None
                if early is not None:
                    held = await early.take(session)
        except BaseException:
            committed = False
            if ticket is not None:
                ticket.leave()  # the claim was rolled back with the transaction
            raise
        finally:
            if early is not None:
                early.ended(committed=committed)
        return existing is None, ticket, held, opened

    async def _give_back(self, arrival: Arrival, ticket: Place, refused: Refused) -> Refused:
        ticket.leave()
        # A note in the thread is the message's one visible response: its claim stays, so the
        # app_mention/message twin or a retry does not post it again. A private or no note leaves
        # nothing a redelivery could repeat that people see (private notes are rationed per person).
        await self.release(arrival, keep_claim=refused.in_thread, refused_turn=ticket)
        return refused

    async def release(
        self, arrival: Arrival, *, keep_claim: bool = False, refused_turn: Place | None = None
    ) -> None:
        """Forget the claim of a message that was not answered, so a redelivery is judged afresh.

        `refused_turn`: the place of a claimed turn that was refused (or failed while vetted). The
        thread's conversation goes too while it holds no message and this turn was the last in its
        line: a refused first mention must not let everyone's follow-ups into a thread the bot never
        answered, and a turn admitted meanwhile answers the thread (on PostgreSQL its place would go
        with the row). Whichever claim of the thread is refused last forgets it. On PostgreSQL the
        thread's row is locked first, as claims lock it before theirs: a claim in flight has
        committed its place by the look, one after it finds no row (thread_not_joined), and two
        refusals at once take turns, each leaving the line in its transaction. (SQLite has one
        writer, and this process's line is the whole line.)
        """
        try:
            async with self._sessions.begin() as session:
                thread = None
                if refused_turn is not None:
                    thread = await repo.find_conversation_id(session, arrival.key, lock=True)
                if not keep_claim:
                    await release_event(session, arrival.event_id)
                if (
                    refused_turn is not None
                    and thread is not None
                    and await refused_turn.last_in_line(session)
                ):
                    await repo.delete_empty_conversation(session, arrival.key)
        except UNAVAILABLE as exc:
            log.warning("could not release the event: %s", error_reason(exc))
