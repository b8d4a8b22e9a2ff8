"""The Slack edge of a turn: an event becomes an Arrival, and the domain's requests become Slack calls.

One event crosses this edge once, in `SlackEdge.handle`: `classify` (bot.slack.events) translates it
into an `Arrival` or a reason to ignore it, and the domain (bot.conversation.turns) takes it from
there: admission, the thread's line, the turn. `SlackSurface` is what the domain calls back for
anything Slack-shaped: who the person is (users.info), the text the model reads, a thread's earlier
messages, the reply's messages, the waiting status line and notes to the person.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.conversation.admission import Arrival
from bot.conversation.handoff import from_record
from bot.conversation.ordering import Place
from bot.conversation.person import Person
from bot.conversation.turns import Turns
from bot.files.extract import FileText, with_attachments
from bot.llm.types import ChatMessage
from bot.logs import bind_context
from bot.metrics import Metrics
from bot.slack.agent_view import AgentView
from bot.slack.backfill import ThreadSpot, thread_context
from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason
from bot.slack.edit_budget import EditBudgets
from bot.slack.events import Ignored, classify, event_type_label, readable, strip_bot_mention, user_ids_in
from bot.slack.files import SlackFiles
from bot.slack.people import LOOKUPS_PER_MESSAGE, UserDirectory
from bot.slack.streaming import ChosenReply, ReplyPlace, Streaming, StreamingConfig, StreamingMode
from bot.storage.models import ConversationKind

log = logging.getLogger(__name__)

# Shown (as the thread's status line) while a message waits for the answer before it to finish.
STATUS_WAITING = "will answer this once the previous answer is finished…"


def admin_contact(admins: frozenset[str]) -> str:
    """Who a refused person should ask, as Slack shows it: the bot's admins by name, else anyone who
    administers the workspace (they count as bot admins too)."""
    named = ", ".join(f"<@{user}>" for user in sorted(admins))
    return f"{named} or a workspace admin" if named else "a workspace admin"


@dataclass(frozen=True)
class EdgeConfig:
    update_interval: float
    backfill_limit: int
    admins: frozenset[str] = frozenset()  # ADMIN_USER_IDS: admins besides the workspace's own
    streaming: StreamingMode = "edits"  # SLACK_STREAMING
    stream_message_chars: int = 24_000  # SLACK_STREAM_MESSAGE_CHARS


@dataclass(frozen=True)
class SlackSurface:
    """The domain's `Surface` for one workspace's events; cheap, built per event."""

    client: AsyncWebClient
    bot_user_id: str | None
    people: UserDirectory
    budgets: EditBudgets
    metrics: Metrics
    config: EdgeConfig
    streaming: Streaming
    agent_view: AgentView | None = None  # the Messages tab: titles, the channel in view
    files: SlackFiles | None = None  # None: attached files are noted as not read

    async def person(self, arrival: Arrival) -> Person | None:
        profile = await self.people.lookup(arrival.user_id)
        if profile is None:
            return None
        return profile.asker(admins=self.config.admins, workspace=arrival.key.team_id)

    def reply_to(self, arrival: Arrival, placeholder: str | None = None) -> ChosenReply:
        key, in_channel = arrival.key, arrival.kind is not ConversationKind.DM
        # The Stop button (edit streaming) names the question it answers.
        place = ReplyPlace(
            key.team_id,
            key.channel_id,
            key.thread_ts,
            arrival.user_id,
            in_channel,
            arrival.message_ts,
            placeholder,
        )
        return self.streaming.reply(self.client, place)

    async def prompt_text(self, arrival: Arrival) -> str:
        text = strip_bot_mention(arrival.text, self.bot_user_id)
        names = await self.people.names(user_ids_in(text), lookups=LOOKUPS_PER_MESSAGE)
        text = readable(text, names)
        if not arrival.attachments:
            return text
        if self.files is None:
            return with_attachments(text, [FileText(a.name, None, "not read") for a in arrival.attachments])
        return with_attachments(text, await self.files.read(arrival.attachments))

    async def thread_context(self, arrival: Arrival, reply_refs: Sequence[str]) -> Sequence[ChatMessage]:
        key = arrival.key
        spot = ThreadSpot(key.channel_id, key.thread_ts, arrival.message_ts, frozenset(reply_refs))
        return await thread_context(
            self.client, self.people, spot, limit=self.config.backfill_limit, bot_user_id=self.bot_user_id
        )

    async def show_waiting(self, arrival: Arrival) -> None:
        """The thread's status line: one call outside the edit budget; Slack clears it at the next reply."""
        try:
            await self.client.assistant_threads_setStatus(
                channel_id=arrival.key.channel_id, thread_ts=arrival.key.thread_ts, status=STATUS_WAITING
            )
        except SLACK_CALL_ERRORS as exc:
            log.info("could not show that a message waits for its turn (%s)", call_error_reason(exc))

    async def situation(self, arrival: Arrival, question: str, *, new_thread: bool) -> Sequence[str]:
        if self.agent_view is None:
            return ()
        return await self.agent_view.situation(self.client, arrival, question, new_thread=new_thread)

    async def tell(self, arrival: Arrival, note: str, *, in_thread: bool) -> None:
        key = arrival.key
        try:
            if in_thread:
                await self.client.chat_postMessage(channel=key.channel_id, thread_ts=key.thread_ts, text=note)
            else:
                # Only the person sees it, in the thread they wrote in (or the channel for a new one).
                await self.client.chat_postEphemeral(
                    channel=key.channel_id,
                    user=arrival.user_id,
                    text=note,
                    thread_ts=key.thread_ts if arrival.mid_thread else None,
                )
        except SLACK_CALL_ERRORS as exc:
            log.warning("could not tell the person: %s", call_error_reason(exc))


class SlackEdge:
    """Translates Slack events for the domain's `Turns`; one instance per process."""

    def __init__(
        self,
        turns: Turns,
        *,
        people: UserDirectory,
        budgets: EditBudgets,
        metrics: Metrics,
        config: EdgeConfig,
        agent_view: AgentView | None = None,
        files: SlackFiles | None = None,
    ) -> None:
        self.turns = turns
        self._people, self._budgets, self._metrics, self._config = people, budgets, metrics, config
        self._agent_view = agent_view
        self._files = files
        mode, chars = config.streaming, config.stream_message_chars
        self.streaming = Streaming(budgets, StreamingConfig(mode, config.update_interval, chars), metrics)
        self._adopted: set[asyncio.Task[Any]] = set()  # strong references till they run

    @property
    def active(self) -> set[Any]:
        """The turns shutdown waits for."""
        return self.turns.active

    def count_received(self, event_type: str) -> None:
        self._metrics.events_received.labels(event_type).inc()

    async def handle(self, body: dict[str, Any], client: AsyncWebClient, bot_user_id: str | None) -> None:
        self.count_received(event_type_label(body))
        arrival = classify(body, bot_user_id)
        if isinstance(arrival, Ignored):
            self.turns.ignored(arrival.reason)
            return
        key = arrival.key
        bind_context(team=key.team_id, channel=key.channel_id, thread=key.thread_ts)
        await self.turns.handle(arrival, self._surface(client, bot_user_id))

    def adopt(self, ticket: Place, record: object, client: AsyncWebClient, bot_user_id: str | None) -> None:
        """Answer a turn another replica admitted and could not run (bot.conversation.handoff), in a
        task of its own; `ticket` holds its adopted place."""
        handoff = from_record(record)
        if handoff is None:
            log.error("an orphaned turn's record is unreadable here: its place is let go")
            ticket.leave()
            return
        surface = self._surface(client, bot_user_id)

        async def resume() -> None:
            key = handoff.arrival.key
            bind_context(team=key.team_id, channel=key.channel_id, thread=key.thread_ts)
            try:
                await self.turns.resume(handoff, ticket, surface)
            except Exception:  # no listener above this task to log it (Bolt's, for events)
                log.exception("an adopted turn failed")

        task = asyncio.create_task(resume(), name="adopted-turn")
        self.turns.active.add(task)  # shutdown waits for it from now on
        self._adopted.add(task)
        task.add_done_callback(self._adopted.discard)

    def _surface(self, client: AsyncWebClient, bot_user_id: str | None) -> SlackSurface:
        return SlackSurface(
            client,
            bot_user_id,
            self._people,
            self._budgets,
            self._metrics,
            self._config,
            self.streaming,
            self._agent_view,
            self._files,
        )
