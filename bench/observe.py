"""What the fakes saw, per bot message and per thread: when each post and edit became visible, which
upstream request served which question, how long each chunk took from the model into the thread.
All times are `time.monotonic()` of this (the bench) process."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bench.fakes import BenchSlack, Shown
from bench.stats import Span
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
    posted_at: float = NAN  # chat.postMessage (or chat.startStream) accepted and visible
    first_text_at: float = NAN  # first visible answer text (not the placeholder)
    last_ok_at: float = NAN  # last accepted call visible: the final edit once the reply is done
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
        """When the final edit became visible; NaN while the reply is not done."""
        if not self.done:
            return NAN
        return max((m.last_ok_at for m in self.messages if not math.isnan(m.last_ok_at)), default=NAN)

    @property
    def edits(self) -> int:
        return sum(m.edits for m in self.messages)


def thread_done(slack: FakeSlackApi, channel: str, root_ts: str) -> bool:
    """The bot is through with the thread: its last message got the final edit (the context block),
    or is a plain-text note without an answer (e.g. "can't reach my database"), which is not edited."""
    mine = [m for m in slack.thread(channel, root_ts) if m.bot_id == slack.bot_id]
    return bool(mine) and (bool(mine[-1].context) or not mine[-1].blocks)


def threads(slack: BenchSlack, channels: Iterable[str]) -> dict[tuple[str, str], ThreadView]:
    """(channel, root ts) -> the bot's messages in that thread, with the times they became visible."""
    channels = set(channels)
    views: dict[tuple[str, str], ThreadView] = {}
    by_ts: dict[tuple[str, str], tuple[ThreadView, MessageView]] = {}
    for channel in channels:
        for m in slack.messages(channel):
            if m.bot_id == slack.bot_id and m.thread_ts:
                thread = views.setdefault((channel, m.thread_ts), ThreadView())
                view = MessageView(m.ts, m.markdown, bool(m.context))
                thread.messages.append(view)
                by_ts[(channel, m.ts)] = (thread, view)
    for shown in slack.shown:
        found = by_ts.get((shown.channel, shown.ts))
        if found is None:
            continue
        message = found[1]
        if shown.method in ("chat.postMessage", "chat.startStream"):  # the message appeared
            message.posted_at = shown.time
        elif shown.method == "chat.update":
            message.edits += 1
        message.last_ok_at = shown.time
        if _shows_text(shown.markdown) and math.isnan(message.first_text_at):
            message.first_text_at = shown.time
    for call in slack.calls:
        if call.status == 429 and call.method in ("chat.postMessage", "chat.update"):
            channel = str(call.params.get("channel", ""))
            if call.method == "chat.postMessage":
                thread_view = views.get((channel, str(call.params.get("thread_ts") or "")))
            else:
                edited = by_ts.get((channel, str(call.params.get("ts", ""))))
                thread_view = None if edited is None else edited[0]
            if thread_view is not None:
                thread_view.rejected_429 += 1
    return views


def _shows_text(markdown: str) -> bool:
    return bool(markdown.strip()) and markdown != PLACEHOLDER


def shown_by_thread(slack: BenchSlack) -> dict[tuple[str, str], list[Shown]]:
    """(channel, root ts) -> what the bot's messages there showed, in the order it became visible."""
    found: dict[tuple[str, str], list[Shown]] = {}
    for shown in slack.shown:
        found.setdefault((shown.channel, shown.thread_ts), []).append(shown)
    return found


def chunk_spans(
    pieces: Sequence[str], sent_at: Sequence[float], shown: Sequence[Shown], deadline: float
) -> list[Span]:
    """One span per chunk the model sent: from its leaving the fake model until the thread first
    showed the answer up to and including that chunk (the bot's messages in ts order, joined)."""
    expected = "".join(pieces)
    ends = list(itertools.accumulate(len(p) for p in pieces))
    texts: dict[str, str] = {}
    spans: list[Span] = []
    chunk, visible = 0, 0
    for event in shown:
        texts[event.ts] = event.markdown
        joined = "".join(texts[ts] for ts in sorted(texts))
        visible = max(visible, common_prefix(joined, expected))
        while chunk < len(sent_at) and ends[chunk] <= visible:
            spans.append(Span(sent_at[chunk], event.time, deadline))
            chunk += 1
    spans.extend(Span(at, NAN, deadline) for at in sent_at[chunk:])
    return spans


def common_prefix(a: str, b: str) -> int:
    """How many leading characters `a` and `b` share (binary search on slices: fast for long texts)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


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
