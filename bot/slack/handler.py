"""From a Slack event to a streamed reply: filter, dedupe, placeholder, context, conversation turn."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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
from bot.slack.edit_budget import EditBudgets
from bot.slack.events import Ignored, Incoming, classify, readable, strip_bot_mention, user_ids_in
from bot.slack.renderer import SlackDeliveryError, SlackReply
from bot.storage import conversations as repo
from bot.storage.conversations import ConversationKey
from bot.storage.db import error_reason
from bot.storage.dedupe import claim_event, release_event
from bot.storage.models import ConversationKind

log = logging.getLogger(__name__)

UPSTREAM_ERROR_KINDS = frozenset(
    {"auth", "credits", "bad_request", "rate_limited", "unavailable", "timeout", "interrupted"}
)
NOTE_FAILED = "Something went wrong while answering. Please try again."
BACKFILL_PAGES = 3


@dataclass(frozen=True)
class _Admission:
    new_thread: bool  # the bot had no conversation for this thread before


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
        self._order = TurnOrder()
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
            admission = await self._admit(incoming, key)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("database unavailable while admitting an event: %s", error_reason(exc))
            if incoming.mentioned or incoming.kind is ConversationKind.DM:
                await _say_quietly(client, incoming, NOTE_DATABASE)
            return
        if isinstance(admission, str):
            self._metrics.events_ignored.labels(admission).inc()
            return
        reply = SlackReply(
            client,
            self._budgets.for_team(incoming.team_id),
            incoming.channel_id,
            incoming.thread_ts,
            interval=self._config.update_interval,
            metrics=self._metrics,
        )
        try:
            await reply.start()
        except SlackDeliveryError:
            log.error("could not post the placeholder; the event is released for Slack's retry")
            await self._release(incoming)
            return
        self._metrics.active_streams.inc()
        try:
            # Hold the thread's turn from here: a follow-up must not overtake this turn while
            # it reads the thread's history.
            async with self._order.hold(key, incoming.ts):
                outcome = await self._answer(incoming, key, reply, client, bot_user_id, admission)
        except BaseException as exc:
            # Cancelled while queued behind another turn (shutdown), or a bug: never leave a placeholder.
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("a turn failed before its reply ended")
            await reply.fail(NOTE_INTERRUPTED if isinstance(exc, asyncio.CancelledError) else NOTE_FAILED)
            raise
        finally:
            self._metrics.active_streams.dec()
        self._metrics.reply_duration.observe(time.monotonic() - started)
        self._observe(outcome)

    async def _answer(
        self,
        incoming: Incoming,
        key: ConversationKey,
        reply: SlackReply,
        client: AsyncWebClient,
        bot_user_id: str | None,
        admission: _Admission,
    ) -> TurnOutcome:
        backfill: Sequence[ChatMessage] = ()
        if admission.new_thread and incoming.in_existing_thread:
            backfill = await self._backfill(incoming, client, bot_user_id, skip=set(reply.refs))
        text = await self._readable(strip_bot_mention(incoming.text, bot_user_id), client)
        turn = Turn(key, incoming.kind, text, incoming.user_id, incoming.ts, backfill)
        return await self._service.reply(turn, reply)

    async def _admit(self, incoming: Incoming, key: ConversationKey) -> _Admission | str:
        """Claim the event so it is answered once; a string is the reason to ignore it.

        An answered thread's conversation exists from here on, so follow-ups sent while the first
        reply is being set up are admitted too (and queue behind it).
        """
        async with self._sessions.begin() as session:
            existing = await repo.find_conversation(session, key)
            if not incoming.mentioned and incoming.kind is not ConversationKind.DM:
                if not self._config.thread_followups:
                    return "followups_off"
                if existing is None:
                    return "thread_not_joined"
            if not await claim_event(session, incoming.event_id, incoming.channel_id, incoming.ts):
                return "duplicate"
            if existing is None:
                await repo.get_or_create_conversation(session, key, incoming.kind)
        return _Admission(new_thread=existing is None)

    async def _release(self, incoming: Incoming) -> None:
        try:
            async with self._sessions.begin() as session:
                await release_event(session, incoming.event_id)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("could not release the event: %s", error_reason(exc))

    async def _backfill(
        self, incoming: Incoming, client: AsyncWebClient, bot_user_id: str | None, skip: set[str]
    ) -> Sequence[ChatMessage]:
        """Earlier messages of a thread the bot is new to, read once: the root and the newest ones.

        Bounded (a few pages); when Slack limits or fails the call, the bot answers without them.
        """
        limit = self._config.backfill_limit
        if limit <= 0:
            return ()
        messages: list[dict[str, Any]] = []
        cursor: str | None = None
        try:
            for _ in range(BACKFILL_PAGES):
                response = await client.conversations_replies(
                    channel=incoming.channel_id, ts=incoming.thread_ts, limit=200, cursor=cursor
                )
                messages += response.get("messages") or []
                cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
                if cursor is None:
                    break
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            reason = exc.response.get("error") if isinstance(exc, SlackApiError) else type(exc).__name__
            log.info("thread history unavailable (%s); answering with what arrived", reason)
        before = float(incoming.ts)
        earlier = [
            m
            for m in messages
            if m.get("text") and m.get("ts") not in skip and float(m.get("ts", "inf")) < before
        ]
        if len(earlier) > limit:
            earlier = [earlier[0], *earlier[len(earlier) - limit + 1 :]]  # the root, then the newest
        context: list[ChatMessage] = []
        for message in earlier:
            mine = bool(bot_user_id and message.get("user") == bot_user_id)
            text = await self._readable(strip_bot_mention(message["text"], bot_user_id), client)
            context.append(ChatMessage("assistant" if mine else "user", text))
        return context

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
    except (SlackApiError, aiohttp.ClientError, TimeoutError):
        return user_id
    profile = user.get("profile") or {}
    return str(profile.get("display_name") or user.get("real_name") or user.get("name") or user_id)


async def _say_quietly(client: AsyncWebClient, incoming: Incoming, text: str) -> None:
    try:
        await client.chat_postMessage(channel=incoming.channel_id, thread_ts=incoming.thread_ts, text=text)
    except SlackApiError as exc:
        log.warning("could not tell the user about the outage: %s", exc.response.get("error"))
