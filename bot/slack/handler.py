"""From a Slack event to a streamed reply: classify, admit, wait for the thread's turn, answer.

One event crosses this edge once, in `handle`: `classify` (bot.slack.events) decides whether it is a
person message the bot may answer, `Admission` (bot.conversation.admission) claims it and gives it a
place in its thread's line, and only when the turn comes is anything posted (placeholder, then the
answer), so a thread's answers appear in the order their questions were admitted and each answer's
messages stay together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.admission import Admission, Admitted, Arrival, Refused
from bot.conversation.ordering import TurnOrder
from bot.conversation.service import (
    NOTE_DATABASE,
    NOTE_INTERRUPTED,
    ConversationService,
    Turn,
    TurnOutcome,
)
from bot.llm.types import ChatMessage
from bot.logs import bind_context
from bot.metrics import Metrics
from bot.slack.backfill import ThreadSpot, thread_context
from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason
from bot.slack.edit_budget import EditBudgets
from bot.slack.events import (
    Ignored,
    Incoming,
    classify,
    event_type_label,
    readable,
    strip_bot_mention,
    user_ids_in,
)
from bot.slack.people import LOOKUPS_PER_MESSAGE, UserDirectory
from bot.slack.renderer import SlackDeliveryError
from bot.slack.streaming import ChosenReply, ReplyPlace, Streaming, StreamingConfig, StreamingMode
from bot.storage.conversations import ConversationKey
from bot.storage.db import UNAVAILABLE, error_reason
from bot.storage.models import ConversationKind

log = logging.getLogger(__name__)

UPSTREAM_ERROR_KINDS = frozenset(
    {"auth", "credits", "bad_request", "rate_limited", "unavailable", "timeout", "interrupted"}
)
NOTE_FAILED = "Something went wrong while answering. Please try again."
# Shown (as the thread's status line) while a message waits for the answer before it to finish.
STATUS_WAITING = "will answer this once the previous answer is finished…"


@dataclass(frozen=True)
class HandlerConfig:
    update_interval: float
    thread_followups: bool
    backfill_limit: int
    streaming: StreamingMode = "edits"
    stream_message_chars: int = 24_000


class SlackTurns:
    """Turns Slack events into conversation turns; one instance per process."""

    def __init__(
        self,
        service: ConversationService,
        sessions: async_sessionmaker[AsyncSession],
        budgets: EditBudgets,
        metrics: Metrics,
        config: HandlerConfig,
        people: UserDirectory,
    ) -> None:
        self._service = service
        self._budgets = budgets
        self._metrics = metrics
        self._config = config
        self._people = people
        mode, chars = config.streaming, config.stream_message_chars
        self.streaming = Streaming(budgets, StreamingConfig(mode, config.update_interval, chars), metrics)
        order = TurnOrder()
        self._admission = Admission(sessions, order, thread_followups=config.thread_followups)
        # Read from the line itself at scrape time, so the gauges are right on every path.
        metrics.turns_waiting.set_function(lambda: order.waiting)
        metrics.turns_running.set_function(lambda: order.running)
        self.active: set[asyncio.Task[Any]] = set()

    async def handle(self, body: dict[str, Any], client: AsyncWebClient, bot_user_id: str | None) -> None:
        self._metrics.events_received.labels(event_type_label(body)).inc()
        incoming = classify(body, bot_user_id)
        if isinstance(incoming, Ignored):
            self._metrics.events_ignored.labels(incoming.reason).inc()
            return
        bind_context(team=incoming.team_id, channel=incoming.channel_id, thread=incoming.thread_ts)
        task = asyncio.current_task()
        if task is not None:
            self.active.add(task)
        try:
            await self._handle(incoming, client, bot_user_id)
        finally:
            if task is not None:
                self.active.discard(task)

    async def _handle(self, incoming: Incoming, client: AsyncWebClient, bot_user_id: str | None) -> None:
        started = time.monotonic()
        arrival = Arrival(
            event_id=incoming.event_id,
            key=ConversationKey(incoming.team_id, incoming.channel_id, incoming.thread_ts),
            kind=incoming.kind,
            message_ts=incoming.ts,
            addressed=incoming.mentioned or incoming.kind is ConversationKind.DM,
        )
        try:
            admitted = await self._admission.admit(arrival)
        except UNAVAILABLE as exc:
            log.warning("database unavailable while admitting an event: %s", error_reason(exc))
            if arrival.addressed:
                await _say_quietly(client, incoming, NOTE_DATABASE)
            return
        if isinstance(admitted, Refused):
            self._metrics.events_ignored.labels(admitted.reason).inc()
            return
        try:
            outcome = await self._take_turn(incoming, admitted, client, bot_user_id)
        finally:
            admitted.ticket.leave()
        if outcome is not None:
            self._metrics.reply_duration.observe(time.monotonic() - started)
            self._observe(outcome)

    async def _take_turn(
        self, incoming: Incoming, admitted: Admitted, client: AsyncWebClient, bot_user_id: str | None
    ) -> TurnOutcome | None:
        """Wait for the thread's earlier turns, then answer; None when the reply could not start."""
        in_channel = incoming.kind is not ConversationKind.DM
        place = ReplyPlace(
            incoming.team_id, incoming.channel_id, incoming.thread_ts, incoming.user_id, in_channel
        )
        reply = self.streaming.reply(client, place)
        try:
            if not admitted.ticket.is_next:
                await _show_status(client, incoming, STATUS_WAITING)
            await admitted.ticket.wait()
        except asyncio.CancelledError:
            # Shutdown while queued: the person learns that this message will not be answered.
            await reply.fail(NOTE_INTERRUPTED)
            raise
        try:
            await reply.start()
        except SlackDeliveryError:
            log.error("could not post the placeholder; the event is released for Slack's retry")
            await self._release(admitted.arrival)
            return None
        self._metrics.active_streams.inc()
        try:
            return await self._answer(incoming, admitted, reply, client, bot_user_id)
        except BaseException as exc:
            # Cancelled (shutdown) or a bug: never leave a placeholder.
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("a turn failed before its reply ended")
            await reply.fail(NOTE_INTERRUPTED if isinstance(exc, asyncio.CancelledError) else NOTE_FAILED)
            raise
        finally:
            self._metrics.active_streams.dec()

    async def _answer(
        self,
        incoming: Incoming,
        admitted: Admitted,
        reply: ChosenReply,
        client: AsyncWebClient,
        bot_user_id: str | None,
    ) -> TurnOutcome:
        backfill: Sequence[ChatMessage] = ()
        if admitted.new_thread and incoming.in_existing_thread:
            spot = ThreadSpot(incoming.channel_id, incoming.thread_ts, incoming.ts, frozenset(reply.refs))
            backfill = await thread_context(
                client, self._people, spot, limit=self._config.backfill_limit, bot_user_id=bot_user_id
            )
        text = strip_bot_mention(incoming.text, bot_user_id)
        names = await self._people.names(user_ids_in(text), lookups=LOOKUPS_PER_MESSAGE)
        turn = Turn(admitted.arrival.key, incoming.kind, readable(text, names), incoming.user_id, backfill)
        return await self._service.reply(turn, reply)

    async def _release(self, arrival: Arrival) -> None:
        try:
            await self._admission.release(arrival)
        except UNAVAILABLE as exc:
            log.warning("could not release the event: %s", error_reason(exc))

    def _observe(self, outcome: TurnOutcome) -> None:
        metrics = self._metrics
        metrics.replies.labels(outcome.status.value).inc()
        if outcome.label in UPSTREAM_ERROR_KINDS:
            metrics.upstream_errors.labels(outcome.label).inc()
        result = outcome.usage
        if result is None:
            return
        if result.ttft_ms is not None:
            metrics.ttft.observe(result.ttft_ms / 1000)
        if result.usage.credits_used:
            metrics.credits.inc(result.usage.credits_used)
        for kind, value in (
            ("prompt", result.usage.prompt_tokens),
            ("completion", result.usage.completion_tokens),
        ):
            if value:
                metrics.tokens.labels(kind).inc(value)


async def _show_status(client: AsyncWebClient, incoming: Incoming, status: str) -> None:
    """The thread's status line: one call outside the edit budget; Slack clears it at the next reply."""
    try:
        await client.assistant_threads_setStatus(
            channel_id=incoming.channel_id, thread_ts=incoming.thread_ts, status=status
        )
    except SLACK_CALL_ERRORS as exc:
        log.info("could not show that a message waits for its turn (%s)", call_error_reason(exc))


async def _say_quietly(client: AsyncWebClient, incoming: Incoming, text: str) -> None:
    try:
        await client.chat_postMessage(channel=incoming.channel_id, thread_ts=incoming.thread_ts, text=text)
    except SLACK_CALL_ERRORS as exc:
        log.warning("could not tell the user about the outage: %s", call_error_reason(exc))
