"""Streams one assistant reply with Slack's native streaming: chat.startStream, coalesced
chat.appendStream calls, and chat.stopStream with the final blocks, each through its workspace budget.

slack-sdk's `AsyncChatStream` is not used: it flushes by buffer size only (no time-based coalescing),
cannot wait for a shared budget before each call, restarts a stream inside `stop()` when none is
open (an unbudgeted chat.startStream), and leaves its state undefined after a failed call, so a 429
or an expired stream (`message_not_in_streaming_state`) could lose or repeat text. The three
methods are called directly, with the same budgets and error handling as the edit renderer.

A streamed message carries at most `limit` characters of the answer; the reply then continues in a
new stream at a clean boundary (bot.slack.text.find_split), exactly as edited replies split. An
expired stream is finished with chat.update on its ts and the reply continues in a new message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from slack_sdk.models.messages.chunk import TaskUpdateChunk
from slack_sdk.web.async_client import AsyncWebClient

from bot.conversation.ports import ReplyPart, ReplySummary, ToolStep
from bot.slack.call_errors import SLACK_CALL_ERRORS
from bot.slack.edit_budget import EditBudget
from bot.slack.ending import (
    Block,
    answer_blocks,
    ending_blocks,
    failure_elements,
    final_message,
    summary_elements,
)
from bot.slack.renderer import RendererMetrics, SlackDeliveryError, call_error_code, classify_error
from bot.slack.retries import without_rate_limit_retries
from bot.slack.text import MAX_MESSAGE_CHARS, SplitPoint, cut_at, defuse, defuse_blocks, find_split

logger = logging.getLogger(__name__)

CHUNK_CHARS = 8_000  # of answer per call: with the joiners `defuse` may add, under Slack's 12,000
UPDATE_CHARS = 11_000  # what one chat.update can show in its markdown block (12,000 with joiners)
_HOLD = 32  # a mention that may still be completing is sent with the next call (see _stable_end)
_MAX_RATE_LIMITED = 30
_MAX_FAILURES = 5
_ENDED = frozenset({"message_not_in_streaming_state", "message_not_found", "msg_too_long"})


class StreamRefused(Exception):
    """Slack refused to start this reply's stream; nothing of it was shown."""


class _StreamEnded(Exception):
    """The open stream cannot take more (expired, deleted, too long): finish it with chat.update."""


@dataclass(frozen=True)
class StreamBudgets:
    """One workspace's budgets for what a native reply calls."""

    start: EditBudget
    append: EditBudget
    stop: EditBudget
    update: EditBudget


@dataclass(frozen=True)
class Recipient:
    """Who a stream in a channel is for (Slack requires it outside DMs)."""

    user_id: str
    team_id: str


class OpenStreams:
    """Native streams open now, per workspace: each will need a chat.stopStream (Tier 2)."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def count(self, team: str) -> int:
        return self._open.get(team, 0)

    def opened(self, team: str) -> None:
        self._open[team] = self._open.get(team, 0) + 1

    def closed(self, team: str) -> None:
        self._open[team] = max(0, self._open.get(team, 0) - 1)


def _stable_end(body: str, start: int) -> int:
    """How much of `body` can be sent now: `defuse` of a later text must begin with `defuse` of
    what was sent, so a `<`, `&` or `@` near the end waits until the text after it is known."""
    held = [body.rfind(c, max(start, len(body) - _HOLD)) for c in "<&@"]
    return min([i for i in held if i >= 0], default=len(body))


class NativeReply:
    """One reply streamed natively in one Slack thread; implements the conversation's `ReplySink`."""

    def __init__(
        self,
        client: AsyncWebClient,
        budgets: StreamBudgets,
        channel: str,
        thread_ts: str,
        *,
        team: str,
        recipient: Recipient | None,
        interval: float,
        limit: int,
        open_streams: OpenStreams,
        metrics: RendererMetrics | None = None,
    ) -> None:
        self._client = without_rate_limit_retries(client)
        self._budgets, self._channel, self._thread_ts = budgets, channel, thread_ts
        self._team, self._recipient, self._open_streams = team, recipient, open_streams
        self._interval, self._limit, self._metrics = interval, limit, metrics
        self._key = f"{channel}:{thread_ts}:{id(self):x}"
        self._start = 0  # where the current message's part of the answer begins
        self._carry = ""  # a code fence reopened at the top of the current message
        self._tail: list[str] = []  # the answer from `_start` on
        self._sent = 0  # characters of the current message's body already in Slack
        self._shown = ""  # what Slack shows of it (defused)
        self._stream: str | None = None  # ts of the open stream
        self._ts: list[str] = []
        self._part_starts: list[tuple[int, str]] = []
        self._ending: tuple[tuple[Block, ...], str | None] | None = None
        self._done = False
        self._changed = asyncio.Event()
        self._next_at = 0.0
        self._worker: asyncio.Task[None] | None = None
        self._tasks: dict[str, ToolStep] = {}  # tool progress not yet sent as task_update chunks

    @property
    def refs(self) -> Sequence[str]:
        return tuple(self._ts)

    @property
    def parts(self) -> Sequence[ReplyPart]:
        # Recovery redraws a message with chat.update, which shows at most UPDATE_CHARS.
        limit = min(self._limit, UPDATE_CHARS)
        return tuple(
            ReplyPart(ts, start, carry, limit)
            for ts, (start, carry) in zip(self._ts, self._part_starts, strict=False)
        )

    # ---- ReplySink -----------------------------------------------------------------------------

    async def open(self, text: str, *, patient: bool) -> None:
        """Start the stream with the answer's first text. Raises StreamRefused when Slack will not
        stream this reply (or, unless `patient`, is rate limited): then nothing was shown."""
        self._tail.append(text)
        body = self._body()
        if len(body) > self._limit:  # more than a message's worth at once: never past its clean end
            end = min(_stable_end(body, 0), find_split(body, self._limit).cut)
        else:
            end = self._sendable(body, 0) or _stable_end(body, 0)
        end = min(end, CHUNK_CHARS)
        try:
            await self._start_stream(end, refusable=not patient)
        except SlackDeliveryError as exc:
            raise StreamRefused(str(exc)) from exc
        self._next_at = time.monotonic() + self._interval
        self._worker = asyncio.create_task(self._run(), name=f"slack-reply-native-{self._key}")

    async def thinking(self) -> None:
        """Nothing to do: the thread's status line says it (bot.slack.status)."""

    async def tool_progress(self, steps: Sequence[ToolStep]) -> None:
        """Tools at work become `task_update` chunks of the open stream, with the next call."""
        if self._ending is None:
            for step in steps:
                self._tasks[step.call_id] = step
            self._changed.set()

    async def append(self, text: str) -> None:
        if self._ending is None and text:
            self._tail.append(text)
            self._changed.set()

    async def finish(self, summary: ReplySummary) -> None:
        """Stop the stream with the final blocks; raises SlackDeliveryError when it never landed."""
        await self._close(ending_blocks(summary_elements(summary), feedback=True), summary.note)

    async def fail(self, note: str) -> None:
        """End with what was appended so far plus `note`; never raises (safe in `finally`)."""
        try:
            await self._close(ending_blocks(failure_elements(note)), note)
        except SlackDeliveryError:
            logger.error("could not show the failure note in %s/%s", self._channel, self._thread_ts)

    async def _close(self, blocks: tuple[Block, ...], note: str | None) -> None:
        if self._ending is None:
            self._ending = (blocks, note)
        for budget in (self._budgets.append, self._budgets.stop, self._budgets.update):
            budget.promote(self._key)
        self._changed.set()
        worker: asyncio.Task[None] | None = None
        for _ in range(2):  # a worker cancelled from outside (shutdown) gets one replacement
            worker = self._worker
            if worker is None or worker.done():
                worker = self._worker = asyncio.create_task(
                    self._run(), name=f"slack-reply-native-{self._key}"
                )
            await asyncio.wait({worker})  # not cancelled with the caller: the stop still lands
            if self._done:
                return
            if not worker.cancelled():
                break
        cause = worker.exception() if worker is not None and not worker.cancelled() else None
        if self._stream is not None:  # it will not be stopped by us: do not count it as open
            self._open_streams.closed(self._team)
            self._stream = None
        raise SlackDeliveryError(f"the reply in {self._channel} did not land in Slack") from cause

    # ---- the background streamer ---------------------------------------------------------------

    def _body(self) -> str:
        if len(self._tail) > 1:
            self._tail[:] = ["".join(self._tail)]
        return self._carry + (self._tail[0] if self._tail else "")

    async def _run(self) -> None:
        try:
            while not self._done:
                await self._changed.wait()
                delay = self._next_at - time.monotonic()
                if delay > 0 and self._ending is None:
                    await asyncio.sleep(delay)
                self._changed.clear()
                try:
                    await self._step()
                except _StreamEnded:
                    await self._finish_by_update()
                self._next_at = time.monotonic() + self._interval
        finally:
            for budget in (self._budgets.append, self._budgets.stop, self._budgets.update):
                budget.forget(self._key)

    async def _step(self) -> None:
        body = self._body()
        if len(body) > self._limit:
            point = find_split(body, self._limit, floor=self._sent)
            if point.cut < self._sent:  # no clean boundary in what is not shown yet
                point = cut_at(body, self._sent)
            if self._stream is None:  # a whole message's worth arrived before its stream began
                await self._start_stream(min(point.cut, CHUNK_CHARS), refusable=False)
            await self._stop((), *await self._send(body, point.cut, close=point.close))
            self._advance(point)
        elif self._ending is not None:
            blocks, note = self._ending
            if self._stream is None:
                if body.strip():
                    await self._start_stream(min(len(body), CHUNK_CHARS), refusable=False)
                else:  # the answer ended at a message boundary, or never began
                    await self._post(*final_message(body, blocks, note))
                    self._done = True
                    return
            await self._stop(blocks, *await self._send(body, len(body)))
            self._done = True
        elif self._stream is None:
            end = min(self._sendable(body, 0), CHUNK_CHARS)
            if body[:end].strip():  # a continuation begins with text, never empty
                await self._start_stream(end, refusable=False)
        else:
            if self._tasks:
                await self._send_tasks()
            end = self._sendable(body, self._sent)
            if end > self._sent:
                await self._append(body, min(end, self._sent + CHUNK_CHARS))
            if self._sendable(self._body(), self._sent) > self._sent:
                self._changed.set()  # more than one call's worth was waiting

    def _sendable(self, body: str, start: int) -> int:
        """How far the text can go out now. Sent text cannot be taken back, so past half a message's
        length, where the message may have to end, only up to a clean boundary (a paragraph, line
        or word break): the split can then still fall on one, however much text arrived at once."""
        end = _stable_end(body, start)
        half = self._limit // 2
        if end <= half:
            return end
        for boundary in ("\n\n", "\n", " "):
            at = body.rfind(boundary, max(start, half), end)
            if at >= 0:
                return at + len(boundary)
        return start

    def _advance(self, point: SplitPoint) -> None:
        """The current message ended at `point`: the rest of the body, with whatever was appended
        while the calls were under way, goes to the next one."""
        body = self._body()
        rest = body[point.cut :]
        self._start += point.cut - len(self._carry)
        self._tail = [rest] if rest else []
        self._carry = point.reopen
        self._sent, self._shown = 0, ""
        self._changed.set()

    def _piece(self, body: str, end: int, close: str = "") -> str:
        """What to send so that Slack shows defuse(body[:end] + close)."""
        full = defuse(body[:end] + close)
        return (
            full[len(self._shown) :]
            if full.startswith(self._shown)
            else defuse(body[self._sent : end] + close)
        )

    async def _send(self, body: str, end: int, *, close: str = "") -> tuple[str, int]:
        """Append until at most one call's worth of `body[:end]` is left: (that rest, end), for the stop."""
        while end - self._sent > CHUNK_CHARS:
            await self._append(body, self._sent + CHUNK_CHARS)
        return self._piece(body, end, close), end

    # ---- the calls -----------------------------------------------------------------------------

    async def _start_stream(self, end: int, *, refusable: bool) -> None:
        body = self._body()
        text = defuse(body[:end])
        fields: dict[str, Any] = {
            "channel": self._channel,
            "thread_ts": self._thread_ts,
            "markdown_text": text,
        }
        if self._recipient is not None:
            fields |= {
                "recipient_user_id": self._recipient.user_id,
                "recipient_team_id": self._recipient.team_id,
            }
        response = await self._call(
            "chat.startStream",
            self._budgets.start,
            lambda: self._client.chat_startStream(**fields),
            final=False,
            refusable=refusable,
        )
        self._stream = str(response["ts"])
        self._open_streams.opened(self._team)
        self._ts.append(self._stream)
        self._part_starts.append((self._start, self._carry))
        self._sent, self._shown = end, text

    async def _append(self, body: str, end: int) -> None:
        assert self._stream is not None
        text, ts = self._piece(body, end), self._stream
        await self._call(
            "chat.appendStream",
            self._budgets.append,
            lambda: self._client.chat_appendStream(channel=self._channel, ts=ts, markdown_text=text),
            final=self._ending is not None,
        )
        self._sent, self._shown = end, self._shown + text

    async def _send_tasks(self) -> None:
        """The tools' latest states as task_update chunks (a timeline under the streamed text)."""
        assert self._stream is not None
        sent, ts = dict(self._tasks), self._stream
        chunks = [
            TaskUpdateChunk(id=s.call_id, title=s.name, status=s.status, details=s.detail).to_dict()
            for s in sent.values()
        ]
        await self._call(
            "chat.appendStream",
            self._budgets.append,
            lambda: self._client.chat_appendStream(channel=self._channel, ts=ts, chunks=chunks),
            final=False,
        )
        for call_id, step in sent.items():
            if self._tasks.get(call_id) == step:  # a newer state came meanwhile: it goes next time
                del self._tasks[call_id]

    async def _stop(self, blocks: Sequence[Block], text: str, end: int) -> None:
        assert self._stream is not None
        ts = self._stream
        fields: dict[str, Any] = {"channel": self._channel, "ts": ts}
        if text:
            fields["markdown_text"] = text
        if blocks:
            fields["blocks"] = defuse_blocks(blocks)
        await self._call(
            "chat.stopStream", self._budgets.stop, lambda: self._client.chat_stopStream(**fields), final=True
        )
        self._sent, self._shown = end, self._shown + text
        self._stream = None
        self._open_streams.closed(self._team)

    async def _finish_by_update(self) -> None:
        """The stream died with text still to come: show the message's part with chat.update (which
        ends its streaming state) and continue in a new message; the last part takes the ending."""
        assert self._stream is not None
        ts, self._stream = self._stream, None
        self._open_streams.closed(self._team)
        body = self._body()
        cap = min(self._limit, UPDATE_CHARS)
        if self._ending is not None and len(body) <= cap:
            text, blocks = final_message(body, *self._ending)
            point: SplitPoint | None = None
        else:
            point = find_split(body, cap) if len(body) > cap else cut_at(body, len(body))
            head = point.head(body)
            text, blocks = head, answer_blocks(head)
        logger.info("a stream in %s ended early; finishing message %s with chat.update", self._channel, ts)
        fields: dict[str, Any] = {
            "channel": self._channel,
            "ts": ts,
            "text": defuse(text[:MAX_MESSAGE_CHARS]) or "…",
        }
        await self._call(
            "chat.update",
            self._budgets.update,
            lambda: self._client.chat_update(**fields, blocks=defuse_blocks(blocks)),
            final=True,
        )
        if point is None:
            self._done = True
        else:
            self._advance(point)

    async def _post(self, text: str, blocks: tuple[Block, ...]) -> None:
        fields: dict[str, Any] = {
            "channel": self._channel,
            "thread_ts": self._thread_ts,
            "text": defuse(text),
        }
        response = await self._call(
            "chat.postMessage",
            None,
            lambda: self._client.chat_postMessage(**fields, blocks=defuse_blocks(blocks)),
            final=True,
        )
        self._ts.append(str(response["ts"]))
        self._part_starts.append((self._start, self._carry))

    async def _call(
        self,
        method: str,
        budget: EditBudget | None,
        send: Callable[[], Awaitable[Any]],
        *,
        final: bool,
        refusable: bool = False,
    ) -> Any:
        """One budgeted call, retried through 429s (Retry-After) and transient failures."""
        rate_limited = failures = 0
        while True:
            if budget is not None:
                await budget.acquire(self._key, final=final)
            started = time.monotonic()
            try:
                response = await send()
            except SLACK_CALL_ERRORS as exc:
                kind, retry_after = classify_error(exc)
                error = call_error_code(exc)
                self._observe(method, kind, started)
                if error in _ENDED and method in ("chat.appendStream", "chat.stopStream"):
                    raise _StreamEnded(error) from exc
                if kind == "ratelimited":
                    rate_limited += 1
                    if budget is not None:
                        budget.penalize(retry_after)
                    else:
                        await asyncio.sleep(retry_after)
                    if refusable or rate_limited > _MAX_RATE_LIMITED:
                        raise SlackDeliveryError(f"{method} stayed rate limited") from exc
                    continue
                failures += 1
                if kind != "transient" or failures > (1 if refusable else _MAX_FAILURES):
                    raise SlackDeliveryError(f"{method} failed: {error or exc!r}") from exc
                await asyncio.sleep(min(0.5 * 2**failures, 8.0))
                continue
            self._observe(method, "ok", started)
            if budget is not None:
                budget.reward()
            return response

    def _observe(self, method: str, outcome: str, started: float) -> None:
        if self._metrics is not None:
            self._metrics.observe_slack_call(method, outcome, time.monotonic() - started)
