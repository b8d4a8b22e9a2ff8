"""Admission: whether a person's message becomes a turn, and its place in its thread's line.

The steps, in order: may this message start or continue the conversation (addressed to the bot, or
in a thread it takes part in), was it answered already (the dedupe claim), then a place in the
thread's line. A stage that refuses turns for policy (access lists, quotas) belongs between the
thread check and the claim, as one more step returning a `Refused` reason. The place in line is
taken at the claim, so turns are ordered by when they were admitted, not by how fast any later call
(to Slack, to the database) returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.ordering import TurnOrder, TurnTicket
from bot.storage import conversations as repo
from bot.storage.conversations import ConversationKey
from bot.storage.dedupe import claim_event, release_event
from bot.storage.models import ConversationKind


@dataclass(frozen=True)
class Arrival:
    """A person's message that may become a turn, as the chat surface (Slack) saw it."""

    event_id: str  # the same on redelivery: answered once
    key: ConversationKey
    kind: ConversationKind
    message_ts: str  # with the channel, identifies the message across twin deliveries
    addressed: bool  # mentioned, or a DM: may start a conversation


@dataclass(frozen=True)
class Admitted:
    arrival: Arrival
    new_thread: bool  # the bot had no conversation for this thread before
    ticket: TurnTicket  # the turn's place in its thread's line; left when the turn ends


@dataclass(frozen=True)
class Refused:
    reason: str  # counted in slackbot_events_ignored


class Admission:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], order: TurnOrder, *, thread_followups: bool
    ) -> None:
        self._sessions, self._order = sessions, order
        self._thread_followups = thread_followups

    async def admit(self, arrival: Arrival) -> Admitted | Refused:
        """Raises the database's errors (SQLAlchemyError, OSError); nothing is claimed then."""
        key = arrival.key
        ticket: TurnTicket | None = None
        try:
            async with self._sessions.begin() as session:
                existing = await repo.find_conversation(session, key)
                if not arrival.addressed:
                    if not self._thread_followups:
                        return Refused("followups_off")
                    if existing is None:
                        return Refused("thread_not_joined")
                if not await claim_event(session, arrival.event_id, key.channel_id, arrival.message_ts):
                    return Refused("duplicate")
                ticket = self._order.enter(key)  # no await since the claim: admission order
                if existing is None:
                    # From here on follow-ups sent while this first reply is set up are admitted too.
                    await repo.get_or_create_conversation(session, key, arrival.kind)
        except BaseException:
            if ticket is not None:
                ticket.leave()  # the claim was rolled back with the transaction
            raise
        assert ticket is not None
        return Admitted(arrival, existing is None, ticket)

    async def release(self, arrival: Arrival) -> None:
        """Forget the claim of a message that could not be answered, so a redelivery is answered."""
        async with self._sessions.begin() as session:
            await release_event(session, arrival.event_id)
