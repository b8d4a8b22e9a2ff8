"""Streams one assistant reply into a Slack thread: a placeholder message, then coalesced edits.

`append` never waits for Slack: a background task per reply edits the message with the latest text,
at most one edit in flight and at least `interval` seconds apart, through the workspace's shared
`EditBudget`. A reply longer than one message continues in new messages in the thread.

Errors from slack_sdk are translated here:

    SlackDeliveryError      the reply could not be shown (placeholder or final text never landed)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import ActionsBlock, ButtonElement
from slack_sdk.web.async_client import AsyncWebClient

from bot.conversation.ports import ReplyNotShown, ReplyPart, ReplySummary, ToolStep
from bot.slack.call_errors import SLACK_CALL_ERRORS
from bot.slack.edit_budget import EditBudget
from bot.slack.ending import (
    answer_blocks,
    ending_blocks,
    failure_elements,
    final_message,
    summary_elements,
)
from bot.slack.retries import without_rate_limit_retries
from bot.slack.text import (
    MAX_MESSAGE_CHARS,
    SplitPoint,
    defuse,
    defuse_blocks,
    display,
    find_split,
    tool_status_line,
)

logger = logging.getLogger(__name__)

END_NOTE = "End of the answer."
STOP_ACTION = "stop_answer"  # the Stop button's action_id (bot.slack.stop handles the press)

_TRANSIENT = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout"})
_GONE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
_MAX_RATE_LIMITED = 30  # consecutive 429s before a final edit is given up
_MAX_FAILURES = 5  # consecutive other failures before a final edit is given up
_MIN_LIMIT = 500

Kind = Literal["ok", "ratelimited", "too_long", "gone", "transient", "fatal"]


class SlackDeliveryError(ReplyNotShown):
    """The reply could not be shown in Slack: the placeholder or a final text never landed."""


class RendererMetrics(Protocol):
    def observe_slack_call(self, method: str, outcome: str, seconds: float) -> None: ...


@dataclass(frozen=True)
class _Payload:
    text: str
    blocks: tuple[dict[str, Any], ...]

    def message(self) -> dict[str, Any]:
        """The message fields of a Slack call: the one way the renderer's text reaches Slack, so no
        path skips `defuse` (the model's text must never notify anyone)."""
        return {"text": defuse(self.text), "blocks": defuse_blocks(self.blocks)}


@dataclass(frozen=True)
class _Plan:
    kind: Literal["interim", "seal", "final"]
    payload: _Payload
    split: SplitPoint | None = None


def call_error_code(exc: Exception) -> str | None:
    """Slack's `error` code of a refused call (None for transport failures)."""
    if isinstance(exc, SlackApiError) and isinstance(exc.response.data, dict):
        error = exc.response.data.get("error")
        return str(error) if error is not None else None
    return None


def classify_error(exc: Exception) -> tuple[Kind, float]:
    """Map a slack_sdk or transport error to what the renderer does about it (and Retry-After)."""
    if isinstance(exc, SlackApiError):
        status = exc.response.status_code
        error = exc.response.get("error") if isinstance(exc.response.data, dict) else None
        if status == 429:
            try:
                return "ratelimited", max(1.0, float(exc.response.headers.get("Retry-After", 1)))
            except ValueError:
                return "ratelimited", 1.0
        if error == "msg_too_long":
            return "too_long", 0.0
        if error in _GONE:
            return "gone", 0.0
        if error in _TRANSIENT or status >= 500:
            return "transient", 0.0
        return "fatal", 0.0
    return "transient", 0.0  # aiohttp.ClientError, TimeoutError


def _answer_payload(text: str) -> _Payload:
    return _Payload(text, answer_blocks(text))


_PLACEHOLDER = _answer_payload(display(""))


def stop_button(value: str) -> dict[str, Any]:
    """The actions block with the Stop button a streaming message shows; `value` names the reply."""
    button = ButtonElement(text="Stop", action_id=STOP_ACTION, value=value)
    return ActionsBlock(block_id=STOP_ACTION, elements=[button]).to_dict()


class SlackReply:
    """One assistant reply in one Slack thread; implements the conversation layer's `ReplySink`."""

    def __init__(
        self,
        client: AsyncWebClient,
        budget: EditBudget,
        channel: str,
        thread_ts: str,
        *,
        interval: float,
        metrics: RendererMetrics | None = None,
        max_chars: int = MAX_MESSAGE_CHARS,
        stop_value: str | None = None,
    ) -> None:
        self._client = without_rate_limit_retries(client)
        self._budget, self._channel, self._thread_ts = budget, channel, thread_ts
        self._interval, self._metrics, self._limit = interval, metrics, max_chars
        self._key = f"{channel}:{thread_ts}:{id(self):x}"  # this reply's turn in the shared budget
        self._start = 0  # where the current message's part of the answer begins
        # The answer from `_start` on, as appended: joined only when an edit needs it, so a long
        # answer in many small deltas costs linear time, not a copy of everything per delta.
        self._tail: list[str] = []
        self._tail_length = 0
        self._carry = ""  # a code fence reopened at the top of the current message
        self._ts: list[str] = []
        self._part_starts: list[tuple[int, str]] = []  # (start, carry) of each message in `_ts`
        self._open = False  # the last of `_ts` still takes text (False before start and after a seal)
        self._shown: _Payload | None = None  # what the current message shows
        self._next_edit_at = 0.0
        self._changed = asyncio.Event()
        self._ending: _Payload | None = None  # context block of the final message, once ended
        self._ending_note: str | None = None
        self._done = False
        self._worker: asyncio.Task[None] | None = None
        self._rate_limited = self._failures = 0
        self._status: str | None = None  # tool progress, shown under the interim text
        # Shown in every interim state and in no final one; the same block every time, so a
        # message's payload changes only with its text and the button costs no edit of its own.
        self._stop_block = stop_button(stop_value) if stop_value is not None else None

    @property
    def refs(self) -> Sequence[str]:
        return tuple(self._ts)

    @property
    def parts(self) -> Sequence[ReplyPart]:
        """Where each message's text begins in the answer, so recovery can redraw the last one."""
        return tuple(
            ReplyPart(ts, start, carry, self._limit)
            for ts, (start, carry) in zip(self._ts, self._part_starts, strict=False)
        )

    # ---- ReplySink -----------------------------------------------------------------------------

    async def start(self, placeholder: str | None = None) -> None:
        """Post the placeholder (or the text appended so far) in the thread now, or take over
        `placeholder`, the one of a turn this replica adopted, and start editing in the background."""
        body = self._body()
        self._shown = self._interim(body if len(body) <= self._limit else "")
        self._ts.append(placeholder if placeholder is not None else await self._post(self._shown))
        self._part_starts.append((0, ""))
        self._open = True
        # The placeholder was a post, not an edit: the first text may be shown at once.
        self._next_edit_at = time.monotonic()
        self._worker = asyncio.create_task(self._run(), name=f"slack-reply-{self._key}")

    async def thinking(self) -> None:
        """Nothing to do: the placeholder already says the model is thinking."""

    async def tool_progress(self, steps: Sequence[ToolStep]) -> None:
        """Show the tools' progress in the interim message's context block, with the next edit
        (no edit of its own: the worker coalesces it with the text)."""
        status = tool_status_line(steps)
        if status != self._status and self._ending is None:
            self._status = status
            self._changed.set()

    async def append(self, text: str) -> None:
        if self._ending is not None or not text:
            return
        self._tail.append(text)
        self._tail_length += len(text)
        self._changed.set()
        if len(self._carry) + self._tail_length > self._limit:
            self._budget.promote(self._key)  # sealing a full message is its final edit

    async def finish(self, summary: ReplySummary) -> None:
        """Land the final text of every message, with the summary in a context block.

        Raises SlackDeliveryError when Slack never accepted the final text.
        """
        # the conversation layer words the note (cut off, empty answer, ...)
        await self._close(summary_elements(summary), summary.note, feedback=True)

    async def fail(self, note: str) -> None:
        """End with what was appended so far plus `note`; never raises (safe in `finally`)."""
        try:
            await self._close(failure_elements(note), note)
        except SlackDeliveryError:
            logger.error("could not show the failure note in %s/%s", self._channel, self._thread_ts)

    def release(self) -> None:
        """Stop without a last edit: another replica answers in this message now."""
        self._done = True
        if self._worker is not None:
            self._worker.cancel()

    # ---- ending --------------------------------------------------------------------------------

    async def _close(self, elements: list[str], note: str | None, *, feedback: bool = False) -> None:
        """`feedback`: the answer finished, so its last message carries the feedback buttons."""
        if self._ending is None:
            self._ending, self._ending_note = _Payload("", ending_blocks(elements, feedback=feedback)), note
        self._budget.promote(self._key)
        self._changed.set()
        worker: asyncio.Task[None] | None = None
        for _ in range(2):  # a worker cancelled from outside (shutdown) gets one replacement
            worker = self._worker
            if worker is None or worker.done():
                self._reap(worker)
                worker = self._worker = asyncio.create_task(self._run(), name=f"slack-reply-{self._key}")
            await asyncio.wait({worker})  # not cancelled with the caller: the final edit still lands
            if self._done:
                return
            if not worker.cancelled():
                break
        cause = worker.exception() if worker is not None and not worker.cancelled() else None
        raise SlackDeliveryError(f"the reply in {self._channel} did not land in Slack") from cause

    @staticmethod
    def _reap(worker: asyncio.Task[None] | None) -> None:
        if worker is not None and not worker.cancelled() and worker.exception() is not None:
            logger.warning("reply worker had stopped: %r", worker.exception())

    def _final_payload(self, body: str) -> _Payload:
        assert self._ending is not None
        return _Payload(*final_message(body, self._ending.blocks, self._ending_note))

    def _interim(self, body: str) -> _Payload:
        """A message while the answer streams: the text so far for display, the tools' progress, then
        the Stop button."""
        payload = _answer_payload(display(body))
        extra: list[dict[str, Any]] = []
        if self._status:  # the tools at work, in the same edits as the text (no edit of its own)
            extra.append({"type": "context", "elements": [{"type": "mrkdwn", "text": self._status}]})
        if self._stop_block is not None:
            extra.append(self._stop_block)
        return _Payload(payload.text, (*payload.blocks, *extra)) if extra else payload

    # ---- the background editor -----------------------------------------------------------------

    def _body(self) -> str:
        return self._carry + self._joined_tail()

    def _joined_tail(self) -> str:
        if len(self._tail) > 1:
            self._tail[:] = ["".join(self._tail)]
        return self._tail[0] if self._tail else ""

    def _plan(self) -> _Plan | None:
        body = self._body()
        if len(body) > self._limit:
            point = find_split(body, self._limit)
            return _Plan("seal", _answer_payload(point.head(body)), point)
        if self._ending is not None:
            return _Plan("final", self._final_payload(body))
        payload = self._interim(body)
        return None if payload == self._shown else _Plan("interim", payload)

    async def _run(self) -> None:
        try:
            while not self._done:
                await self._changed.wait()
                delay = self._next_edit_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._changed.clear()
                if not self._open:  # start() never posted, or posting after a seal failed
                    await self._open_message()
                    continue
                plan = self._plan()
                if plan is not None and plan.payload != self._shown:
                    # The first text over the placeholder goes with the final edits, before others'
                    # interim ones: it is what people wait for. (By its text: the placeholder shown
                    # carries the Stop button, and tool progress, which the bare one has not.)
                    first = self._shown is not None and self._shown.text == _PLACEHOLDER.text
                    await self._budget.acquire(self._key, final=plan.kind != "interim" or first)
                    plan = self._plan()  # the latest text, now that it is our turn
                if plan is None:
                    continue
                if plan.payload == self._shown or await self._update(plan):
                    await self._advance(plan)
        finally:
            self._budget.forget(self._key)

    async def _advance(self, plan: _Plan) -> None:
        if plan.kind == "final":
            self._done = True
        elif plan.kind == "seal":
            assert plan.split is not None
            sealed = plan.split.cut - len(self._carry)  # text appended since the plan comes after it
            rest = self._joined_tail()[sealed:]
            self._start += sealed
            self._tail, self._tail_length = [rest] if rest else [], len(rest)
            self._carry = plan.split.reopen
            self._open = False
            await self._open_message()

    async def _open_message(self) -> None:
        """Continue the reply in a new message showing the current part, final if it already is."""
        body = self._body()
        if len(body) > self._limit:
            payload = _answer_payload(find_split(body, self._limit).head(body))
        elif self._ending is not None:
            payload, self._done = self._final_payload(body), True
        else:
            payload = self._interim(body)
        start, carry = self._start, self._carry
        self._ts.append(await self._post(payload))
        self._part_starts.append((start, carry))
        self._open, self._shown = True, payload
        self._next_edit_at = time.monotonic() + self._interval
        self._changed.set()
        logger.debug("reply in %s continues in message %d", self._channel, len(self._ts))

    async def _update(self, plan: _Plan) -> bool:
        """Edit the current message; False when it did not land (the loop retries with fresh text)."""
        final = plan.kind != "interim"
        started = time.monotonic()
        try:
            await self._client.chat_update(channel=self._channel, ts=self._ts[-1], **plan.payload.message())
        except SLACK_CALL_ERRORS as exc:
            kind, retry_after = classify_error(exc)
            self._observe("chat.update", kind, started)
            return await self._handle_failure(exc, kind, retry_after, plan, final)
        self._observe("chat.update", "ok", started)
        self._budget.reward()
        self._shown = plan.payload
        self._rate_limited = self._failures = 0
        self._next_edit_at = time.monotonic() + self._interval
        return True

    async def _handle_failure(
        self, exc: Exception, kind: Kind, retry_after: float, plan: _Plan, final: bool
    ) -> bool:
        self._changed.set()  # try again with whatever the text is by then
        if kind == "ratelimited":
            self._budget.penalize(retry_after)
            self._rate_limited += 1
            if final and self._rate_limited > _MAX_RATE_LIMITED:
                raise SlackDeliveryError("chat.update stayed rate limited") from exc
            return False
        self._failures += 1
        if kind == "fatal" or (final and self._failures > _MAX_FAILURES):
            raise SlackDeliveryError(f"chat.update failed: {exc}") from exc
        if kind == "too_long":  # Slack counts differently than we do: use smaller messages
            self._limit = max(_MIN_LIMIT, min(self._limit, len(plan.payload.text)) * 3 // 4)
        elif kind == "gone":  # someone deleted the message: show this text in a new one
            logger.warning("reply message %s vanished; posting a new one", self._ts[-1])
            self._ts[-1] = await self._post(plan.payload)
            self._shown = plan.payload
            self._next_edit_at = time.monotonic() + self._interval
            return True
        else:
            logger.warning("chat.update failed (%s), will retry", exc.__class__.__name__)
            self._next_edit_at = time.monotonic() + min(0.5 * 2**self._failures, 8.0)
        return False

    async def _post(self, payload: _Payload) -> str:
        # Slack posts about one message a second per channel: replies starting together in one
        # channel queue behind each other's 429s, so those are waited out like an edit's, apart
        # from the few retries a failing Slack gets.
        rate_limited = failures = 0
        while True:
            started = time.monotonic()
            try:
                # No previews: a link the model built could otherwise carry thread content to
                # whoever serves it when Slack fetches the preview.
                response = await self._client.chat_postMessage(
                    channel=self._channel,
                    thread_ts=self._thread_ts,
                    unfurl_links=False,
                    unfurl_media=False,
                    **payload.message(),
                )
            except SLACK_CALL_ERRORS as exc:
                kind, retry_after = classify_error(exc)
                self._observe("chat.postMessage", kind, started)
                if kind == "ratelimited":
                    rate_limited += 1
                else:
                    failures += 1
                if (
                    kind not in ("ratelimited", "transient")
                    or rate_limited > _MAX_RATE_LIMITED
                    or failures >= _MAX_FAILURES
                ):
                    raise SlackDeliveryError(f"chat.postMessage failed: {exc}") from exc
                await asyncio.sleep(retry_after if kind == "ratelimited" else 0.5 * 2**failures)
                continue
            self._observe("chat.postMessage", "ok", started)
            return str(response["ts"])

    def _observe(self, method: str, outcome: str, started: float) -> None:
        if self._metrics is not None:
            self._metrics.observe_slack_call(method, outcome, time.monotonic() - started)
