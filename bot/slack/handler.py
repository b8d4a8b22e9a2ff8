"""From a Slack event to a streamed reply: filter, dedupe, placeholder, context, conversation turn."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.service import ConversationService, Turn, TurnOutcome
from bot.llm.types import ChatMessage
from bot.logs import bind_context
from bot.metrics import Metrics
from bot.slack.edit_budget import EditBudgets
from bot.slack.events import Ignored, Incoming, classify, readable, strip_bot_mention, user_ids_in
from bot.slack.renderer import SlackReply
from bot.storage import conversations as repo
from bot.storage.conversations import ConversationKey
from bot.storage.dedupe import claim_event

log = logging.getLogger(__name__)

UPSTREAM_ERROR_KINDS = frozenset(
    {"auth", "credits", "bad_request", "rate_limited", "unavailable", "timeout", "interrupted"}
)
NOTE_NO_DATABASE = "I can't reach my database right now, so I can't answer. Please try again in a minute."


@dataclass(frozen=True)
class HandlerConfig:
    update_interval: float
    thread_followups: bool
    backfill_limit: int


class SlackTurns:
    """Turns Slack events into conversation turns; one instance per process."""

    def __init__(
        self,
        service: ConversationService,
        sessions: async_sessionmaker[AsyncSession],
        budgets: EditBudgets,
        metrics: Metrics,
        config: HandlerConfig,
    ) -> None:
        self._service = service
        self._sessions = sessions
        self._budgets = budgets
        self._metrics = metrics
        self._config = config
        self._names: dict[str, str] = {}
        self.active: set[asyncio.Task[Any]] = set()

    async def handle(self, body: dict[str, Any], client: AsyncWebClient, bot_user_id: str | None) -> None:
        event_type = str((body.get("event") or {}).get("type", "unknown"))
        self._metrics.events_received.labels(event_type).inc()
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
        key = ConversationKey(incoming.team_id, incoming.channel_id, incoming.thread_ts)
        try:
            decision = await self._admit(incoming, key)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("database unavailable while admitting an event: %s", type(exc).__name__)
            if incoming.mentioned or incoming.kind.value == "dm":
                await _say_quietly(client, incoming, NOTE_NO_DATABASE)
            return
        if decision is not None:
            self._metrics.events_ignored.labels(decision).inc()
            return
        reply = SlackReply(
            client,
            self._budgets.for_team(incoming.team_id),
            incoming.channel_id,
            incoming.thread_ts,
            interval=self._config.update_interval,
            metrics=self._metrics,
        )
        await reply.start()
        backfill = (
            await self._backfill(incoming, client, bot_user_id, skip=set(reply.refs))
            if incoming.in_existing_thread
            else ()
        )
        text = await self._readable(strip_bot_mention(incoming.text, bot_user_id), client)
        turn = Turn(key, incoming.kind, text, incoming.user_id, incoming.ts, backfill)
        self._metrics.active_streams.inc()
        try:
            outcome = await self._service.reply(turn, reply)
        finally:
            self._metrics.active_streams.dec()
        self._metrics.reply_duration.observe(time.monotonic() - started)
        self._observe(outcome)

    async def _admit(self, incoming: Incoming, key: ConversationKey) -> str | None:
        """None to answer, else the reason to ignore; claims the event so it is answered once."""
        async with self._sessions.begin() as session:
            if not incoming.mentioned and incoming.kind.value != "dm":
                if not self._config.thread_followups:
                    return "followups_off"
                if await repo.find_conversation(session, key) is None:
                    return "thread_not_joined"
            if not await claim_event(session, incoming.event_id, incoming.channel_id, incoming.ts):
                return "duplicate"
        return None

    async def _backfill(
        self, incoming: Incoming, client: AsyncWebClient, bot_user_id: str | None, skip: set[str]
    ) -> Sequence[ChatMessage]:
        """Earlier messages of a thread the bot is new to, read once; Slack limits mean: go without."""
        if self._config.backfill_limit <= 0:
            return ()
        async with self._sessions() as session:
            if (
                await repo.find_conversation(
                    session, ConversationKey(incoming.team_id, incoming.channel_id, incoming.thread_ts)
                )
                is not None
            ):
                return ()
        try:
            response = await client.conversations_replies(
                channel=incoming.channel_id, ts=incoming.thread_ts, limit=self._config.backfill_limit
            )
        except SlackApiError as exc:
            log.info("thread history unavailable (%s); answering without it", exc.response.get("error"))
            return ()
        earlier: list[ChatMessage] = []
        messages: list[dict[str, Any]] = response.get("messages") or []
        for message in messages[: self._config.backfill_limit]:
            if message.get("ts") == incoming.ts or message.get("ts") in skip or not message.get("text"):
                continue
            mine = bool(bot_user_id and message.get("user") == bot_user_id)
            text = await self._readable(strip_bot_mention(message["text"], bot_user_id), client)
            earlier.append(ChatMessage("assistant" if mine else "user", text))
        return earlier

    async def _readable(self, text: str, client: AsyncWebClient) -> str:
        for user_id in user_ids_in(text):
            if user_id not in self._names:
                self._names[user_id] = await _display_name(client, user_id)
        return readable(text, self._names)

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


async def _display_name(client: AsyncWebClient, user_id: str) -> str:
    try:
        user = (await client.users_info(user=user_id)).get("user") or {}
    except SlackApiError:
        return user_id
    profile = user.get("profile") or {}
    return str(profile.get("display_name") or user.get("real_name") or user.get("name") or user_id)


async def _say_quietly(client: AsyncWebClient, incoming: Incoming, text: str) -> None:
    try:
        await client.chat_postMessage(channel=incoming.channel_id, thread_ts=incoming.thread_ts, text=text)
    except SlackApiError as exc:
        log.warning("could not tell the user about the outage: %s", exc.response.get("error"))
