"""Admission: whether an addressed person message becomes a turn, and its place in its thread's line.

The steps, in order: is the bot part of this thread (or addressed), has the event been answered
already (the dedupe claim), then a place in the thread's line. A stage that refuses a turn for
policy (access lists, quotas) belongs between the thread check and the claim, as one more step
returning a `Refused` reason; the turn's place in line is taken at the claim, so order is decided
by when events were admitted, not by how fast Slack accepts any later call.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.ordering import TurnOrder, TurnTicket
from bot.slack.events import Incoming
from bot.storage import conversations as repo
from bot.storage.conversations import ConversationKey
from bot.storage.dedupe import claim_event, release_event
from bot.storage.models import ConversationKind


@dataclass(frozen=True)
class Admitted:
    incoming: Incoming
    key: ConversationKey
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

    async def admit(self, incoming: Incoming) -> Admitted | Refused:
        """Raises the database's errors (SQLAlchemyError, OSError); nothing is claimed then."""
        key = ConversationKey(incoming.team_id, incoming.channel_id, incoming.thread_ts)
        ticket: TurnTicket | None = None
        try:
            async with self._sessions.begin() as session:
                existing = await repo.find_conversation(session, key)
                if not incoming.mentioned and incoming.kind is not ConversationKind.DM:
                    if not self._thread_followups:
                        return Refused("followups_off")
                    if existing is None:
                        return Refused("thread_not_joined")
                if not await claim_event(session, incoming.event_id, incoming.channel_id, incoming.ts):
                    return Refused("duplicate")
                ticket = self._order.enter(key)  # no await since the claim: admission order
                if existing is None:
                    # From here on follow-ups sent while this first reply is set up are admitted too.
                    await repo.get_or_create_conversation(session, key, incoming.kind)
        except BaseException:
            if ticket is not None:
                ticket.leave()  # the claim was rolled back with the transaction
            raise
        assert ticket is not None
        return Admitted(incoming, key, existing is None, ticket)

    async def release(self, incoming: Incoming) -> None:
        """Forget the claim of an event that could not be answered, so Slack's retry is answered."""
        async with self._sessions.begin() as session:
            await release_event(session, incoming.event_id)
