"""The agent Messages tab: suggested prompts, DM thread titles, and the channel a person views beside it.

- Opening the Messages tab (`app_home_opened`, `tab == "messages"`) sets the suggested prompts from
  AGENT_PROMPTS_FILE (`assistant.threads.setSuggestedPrompts`).
- A new DM conversation is titled from its first question, trimmed, without asking the model
  (`assistant.threads.setTitle`).
- `app_context_changed` says which channel the person views; it is stored per DM, and each answer in
  that DM tells the model the channel's name (conversations.info, cached). The channel's messages
  are never read.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import tomllib
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.admission import Arrival
from bot.metrics import Metrics
from bot.settings import SettingsError
from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason
from bot.slack.events import SLACK_ID, event_type_label
from bot.storage import agent_context
from bot.storage.conversations import ConversationKey
from bot.storage.db import UNAVAILABLE, error_reason
from bot.storage.models import ConversationKind

log = logging.getLogger(__name__)

MAX_PROMPTS = 4  # Slack shows at most four suggested prompts
TITLE_MAX = 60  # a thread title is one line in Slack's history list
NAME_TTL = 600.0  # channel renames show up within ten minutes
NAME_CACHE_SIZE = 2_000
LOOKUP_TIMEOUT = 5.0
_CHANNEL_ENTITY = "slack#/types/channel_id"
_MESSAGE_ENTITY = "slack#/types/message_context"
_CHANNEL_ID = re.compile(r"[CG][A-Z0-9]{1,23}")  # public or private channels; never DMs
_DM_ID = re.compile(r"D[A-Z0-9]{1,23}")
_CHANNEL_NAME = re.compile(r"[^\w.-]")


@dataclass(frozen=True)
class SuggestedPrompt:
    title: str
    message: str


@dataclass(frozen=True)
class SuggestedPrompts:
    title: str | None
    prompts: tuple[SuggestedPrompt, ...]


def load_prompts(path: Path) -> SuggestedPrompts:
    """Read the prompts file; SettingsError naming AGENT_PROMPTS_FILE says what is wrong."""

    def bad(problem: str) -> SettingsError:
        return SettingsError(f"AGENT_PROMPTS_FILE: {path}: {problem}")

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise bad(f"cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise bad(f"not valid TOML ({exc})") from None
    title = data.get("title")
    if title is not None and (not isinstance(title, str) or not title.strip()):
        raise bad("`title` must be non-empty text")
    items = data.get("prompts")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_PROMPTS:
        raise bad(f"needs 1 to {MAX_PROMPTS} [[prompts]] entries")
    prompts: list[SuggestedPrompt] = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict) or set(item) != {"title", "message"}:
            raise bad(f"prompt {number} needs exactly a `title` and a `message`")
        if not all(isinstance(item[k], str) and item[k].strip() for k in ("title", "message")):
            raise bad(f"prompt {number}: `title` and `message` must be non-empty text")
        prompts.append(SuggestedPrompt(item["title"].strip(), item["message"].strip()))
    return SuggestedPrompts(title.strip() if title else None, tuple(prompts))


def thread_title(question: str) -> str | None:
    """A short title from a person's first question: its first paragraph of prose (code blocks
    skipped), whitespace collapsed, cut at a word end. None when there is no prose (a file, only code)."""
    paragraph: list[str] = []
    in_code = False
    for line in question.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_code = not in_code
            if paragraph:
                break
        elif not in_code and stripped:
            paragraph.append(stripped)
        elif paragraph:
            break
    text = " ".join(" ".join(paragraph).split()).lstrip("#>*- ").strip()
    if not text:
        return None
    if len(text) <= TITLE_MAX:
        return text
    cut = text[: TITLE_MAX - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space >= TITLE_MAX // 2 else cut).rstrip(" ,.;:") + "…"


def viewed_channel(event: dict[str, Any]) -> str | None:
    """The channel the person views, from `context.entities` (ordered by relevance): a channel, or the
    channel of a message they look at. DMs and other things they may view are left out."""
    context = event.get("context")
    entities = context.get("entities") if isinstance(context, dict) else None
    for entity in entities if isinstance(entities, list) else ():
        if not isinstance(entity, dict):
            continue
        value = entity.get("value")
        if entity.get("type") == _MESSAGE_ENTITY and isinstance(value, dict):
            value = value.get("channel_id")
        if entity.get("type") in (_CHANNEL_ENTITY, _MESSAGE_ENTITY) and isinstance(value, str):
            return value if _CHANNEL_ID.fullmatch(value) else None
    return None


def viewing_note(name: str) -> str:
    """The system prompt's line about the channel in view: its name only, never its content."""
    return (
        f"The person is looking at the Slack channel #{name} while talking to you. You cannot read "
        "that channel's messages; if they ask about them, say so and ask them to paste what matters."
    )


class ChannelNames:
    """conversations.info names behind a small TTL cache; a failed look-up is not cached."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, tuple[str | None, float]] = OrderedDict()

    async def name(self, client: AsyncWebClient, channel: str) -> str | None:
        cached = self._cache.get(channel)
        if cached is not None and cached[1] > time.monotonic():
            self._cache.move_to_end(channel)
            return cached[0]
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                response = await client.conversations_info(channel=channel)
        except SLACK_CALL_ERRORS as exc:
            reason = call_error_reason(exc)
            log.info("no name for the channel in view (%s)", reason)
            if reason in ("channel_not_found", "not_in_channel"):
                self._remember(channel, None)  # private and the bot is not in it: keep it unnamed
            return None
        info = response.get("channel")
        name = info.get("name") if isinstance(info, dict) and not info.get("is_mpim") else None
        clean = _CHANNEL_NAME.sub("", name)[:80] if isinstance(name, str) else ""
        self._remember(channel, clean or None)
        return clean or None

    def _remember(self, channel: str, name: str | None) -> None:
        self._cache[channel] = (name, time.monotonic() + NAME_TTL)
        self._cache.move_to_end(channel)
        while len(self._cache) > NAME_CACHE_SIZE:
            self._cache.popitem(last=False)


class AgentView:
    """State shared by the Messages tab's listeners and the turns of DM conversations."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], prompts: SuggestedPrompts, metrics: Metrics
    ) -> None:
        self.sessions, self.prompts, self.metrics = sessions, prompts, metrics
        self.names = ChannelNames()
        self._titling: set[asyncio.Task[None]] = set()  # referenced until done

    async def situation(
        self, client: AsyncWebClient, arrival: Arrival, question: str, *, new_thread: bool
    ) -> tuple[str, ...]:
        """For a DM turn: title a new conversation (in the background) and return the system lines
        about where the person is. Nothing for channel turns."""
        if arrival.kind is not ConversationKind.DM:
            return ()
        key = arrival.key
        if new_thread and (title := thread_title(question)):
            task = asyncio.create_task(_set_title(client, key, title), name="agent-title")
            self._titling.add(task)
            task.add_done_callback(self._titling.discard)
        try:
            async with self.sessions() as session:
                channel = await agent_context.viewing_channel(session, key.team_id, key.channel_id)
        except UNAVAILABLE as exc:
            log.warning("could not read the channel in view: %s", error_reason(exc))
            return ()
        name = await self.names.name(client, channel) if channel else None
        return (viewing_note(name),) if name else ()

    # ---- listeners (Bolt injects the arguments by name) ----------------------------------------

    async def on_messages_tab(
        self, body: dict[str, Any], event: dict[str, Any], client: AsyncWebClient
    ) -> None:
        self.metrics.events_received.labels(event_type_label(body)).inc()
        channel = _valid(event.get("channel"), _DM_ID)
        if channel is None:
            self.metrics.events_ignored.labels("malformed").inc()
            return
        prompts = [{"title": p.title, "message": p.message} for p in self.prompts.prompts]
        try:
            await client.assistant_threads_setSuggestedPrompts(
                channel_id=channel, title=self.prompts.title, prompts=prompts
            )
        except SLACK_CALL_ERRORS as exc:
            log.warning("could not set the suggested prompts (%s)", call_error_reason(exc))

    async def on_context_changed(
        self, body: dict[str, Any], event: dict[str, Any], client: AsyncWebClient
    ) -> None:
        self.metrics.events_received.labels(event_type_label(body)).inc()
        team, channel = _valid(body.get("team_id"), SLACK_ID), _valid(event.get("channel"), _DM_ID)
        if team is None or channel is None:
            self.metrics.events_ignored.labels("malformed").inc()
            return
        viewing = viewed_channel(event)
        sent = body.get("event_time")
        changed_at = datetime.fromtimestamp(sent, UTC) if isinstance(sent, int) and 0 < sent < 2**33 else None
        try:
            async with self.sessions.begin() as session:
                await agent_context.remember_viewing(
                    session, team, channel, _valid(event.get("user"), SLACK_ID), viewing, changed_at
                )
        except UNAVAILABLE as exc:
            log.warning("could not store the channel in view: %s", error_reason(exc))
            return
        if viewing is not None:
            await self.names.name(client, viewing)  # warm the cache: the next question needs it


async def _set_title(client: AsyncWebClient, key: ConversationKey, title: str) -> None:
    try:
        await client.assistant_threads_setTitle(
            channel_id=key.channel_id, thread_ts=key.thread_ts, title=title
        )
    except SLACK_CALL_ERRORS as exc:
        log.info("could not title the conversation (%s)", call_error_reason(exc))


def _valid(value: object, pattern: re.Pattern[str]) -> str | None:
    """A Slack id from a payload, when it is one."""
    return value if isinstance(value, str) and pattern.fullmatch(value) else None


async def is_messages_tab(event: dict[str, Any]) -> bool:
    return event.get("tab") == "messages"


def register_agent_view(app: AsyncApp, view: AgentView) -> None:
    """Before the catch-all listener: Bolt runs the first listener that matches. The Home tab's
    `app_home_opened` has its own listener, matched on `tab == "home"`."""
    app.event("app_home_opened", matchers=[is_messages_tab])(view.on_messages_tab)
    app.event("app_context_changed")(view.on_context_changed)
