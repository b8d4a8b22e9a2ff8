"""What the fakes saw, per bot message and per thread: when each Slack call arrived, which upstream
request served which question. All times are `time.monotonic()` of this (the bench) process."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from bot.slack.text import PLACEHOLDER
from tests.fakes.aimlapi import FakeAimlApi, RecordedRequest
from tests.fakes.slack_api import FakeSlackApi

NAN = float("nan")
TAG = re.compile(r"\[q:[A-Za-z0-9_-]+\]")


@dataclass
class MessageView:
    """One bot message in a thread, with the accepted Slack calls that made it."""

    ts: str
    markdown: str  # its answer text now (the `markdown` blocks)
    final: bool  # it carries the context block the final edit adds
    posted_at: float = NAN  # chat.postMessage accepted (arrival at the fake)
    first_text_at: float = NAN  # first accepted call showing answer text (not the placeholder)
    last_ok_at: float = NAN  # last accepted call on it: the final edit once the reply is done
    edits: int = 0  # accepted chat.update calls


@dataclass
class ThreadView:
    messages: list[MessageView] = field(default_factory=list)
    rejected_429: int = 0

    @property
    def answer(self) -> str:
        return "".join(m.markdown for m in self.messages)

    @property
    def done(self) -> bool:
        """The last message got its final edit (a plain note without an answer is not a done reply)."""
        return bool(self.messages) and self.messages[-1].final

    @property
    def placeholder_at(self) -> float:
        return self.messages[0].posted_at if self.messages else NAN

    @property
    def first_text_at(self) -> float:
        return min((m.first_text_at for m in self.messages if not math.isnan(m.first_text_at)), default=NAN)

    @property
    def final_at(self) -> float:
        return max((m.last_ok_at for m in self.messages if not math.isnan(m.last_ok_at)), default=NAN)

    @property
    def edits(self) -> int:
        return sum(m.edits for m in self.messages)


def thread_done(slack: FakeSlackApi, channel: str, root_ts: str) -> bool:
    """The bot is through with the thread: its last message got the final edit (the context block),
    or is a plain-text note without an answer (e.g. "can't reach my database"), which is not edited."""
    mine = [m for m in slack.thread(channel, root_ts) if m.bot_id == slack.bot_id]
    return bool(mine) and (bool(mine[-1].context) or not mine[-1].blocks)


def threads(slack: FakeSlackApi, channels: Iterable[str]) -> dict[tuple[str, str], ThreadView]:
    """(channel, root ts) -> the bot's messages in that thread, with call timings."""
    views: dict[tuple[str, str], ThreadView] = {}
    by_ts: dict[tuple[str, str], tuple[ThreadView, MessageView]] = {}
    for channel in set(channels):
        for m in slack.messages(channel):
            if m.bot_id == slack.bot_id and m.thread_ts:
                thread = views.setdefault((channel, m.thread_ts), ThreadView())
                view = MessageView(m.ts, m.markdown, bool(m.context))
                thread.messages.append(view)
                by_ts[(channel, m.ts)] = (thread, view)
    posted: dict[tuple[str, str], int] = {}
    for call in slack.calls:
        channel = str(call.params.get("channel", ""))
        text = str(call.params.get("text") or "")
        shows_text = bool(text.strip()) and text != PLACEHOLDER
        if call.method == "chat.postMessage":
            key = (channel, str(call.params.get("thread_ts") or ""))
            thread_view = views.get(key)
            if thread_view is None:
                continue
            if not call.ok:
                thread_view.rejected_429 += call.status == 429
                continue
            # Posts are stored in arrival order, so the n-th accepted post is the n-th message.
            n = posted[key] = posted.get(key, -1) + 1
            if n < len(thread_view.messages):
                message = thread_view.messages[n]
                message.posted_at = message.last_ok_at = call.time
                if shows_text:
                    message.first_text_at = call.time
        elif call.method == "chat.update":
            found = by_ts.get((channel, str(call.params.get("ts", ""))))
            if found is None:
                continue
            thread_view, message = found
            if not call.ok:
                thread_view.rejected_429 += call.status == 429
                continue
            message.edits += 1
            message.last_ok_at = call.time
            if shows_text and math.isnan(message.first_text_at):
                message.first_text_at = call.time
    return views


def upstream_by_tag(aiml: FakeAimlApi) -> dict[str, RecordedRequest]:
    """Question tag -> the chat request that answered it (the one that streamed, if retried)."""
    found: dict[str, RecordedRequest] = {}
    for request in aiml.chat_requests:
        body = request.json if isinstance(request.json, dict) else {}
        messages = body.get("messages") or []
        last = str(messages[-1].get("content", "")) if messages else ""
        match = TAG.search(last)
        if match and (match.group(0) not in found or request.content_sent_at):
            found[match.group(0)] = request
    return found


def upstream_messages(request: RecordedRequest) -> int:
    body = request.json if isinstance(request.json, dict) else {}
    return len(body.get("messages") or [])


def first_token_at(request: RecordedRequest | None) -> float:
    return request.content_sent_at[0] if request is not None and request.content_sent_at else NAN


def last_token_at(request: RecordedRequest | None) -> float:
    return request.content_sent_at[-1] if request is not None and request.content_sent_at else NAN
