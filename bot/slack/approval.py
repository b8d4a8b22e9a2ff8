"""Asking the person before a tool marked `needs_approval` runs: Approve / Deny buttons in the thread.

The bot posts the tool and its arguments (bounded, escaped, mentions defused: the model wrote them);
only the person who asked may answer (anyone else gets an ephemeral line); no answer within
TOOL_APPROVAL_TIMEOUT is a no; the message is then changed to show the decision, without buttons.

Answers are kept in the database (bot.conversation.approvals), so a press decides whichever replica
it reaches; a press on a question nobody waits for any more (answered, expired, or asked before a
restart) gets an ephemeral line. The tool never runs without a yes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    MarkdownTextObject,
    SectionBlock,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.conversation.approvals import Answer, ApprovalBook, Press, PressOutcome
from bot.conversation.tools import ToolContext, ToolSpec
from bot.metrics import Metrics
from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason
from bot.slack.listeners import AttachToContext
from bot.slack.text import defuse, mrkdwn_escape
from bot.storage.db import UNAVAILABLE, error_reason

log = logging.getLogger(__name__)

APPROVE, DENY = "tool_approval_approve", "tool_approval_deny"
ACTIONS = re.compile(f"^({APPROVE}|{DENY})$")
APPROVER = "glm_approver"  # the context key the approver is found under
MAX_ARGUMENTS_CHARS = 2_500  # a section's text may hold 3,000
ONLY_THE_ASKER = "Only <@{asker}>, who asked, can approve or deny this tool call."
NOT_WAITING = "This request is no longer waiting for an answer (it was answered, or it expired)."
NOT_RECORDED = "Your answer could not be recorded just now (the bot's database is unavailable); try again."


@dataclass
class _Pending:
    asker: str
    answer: asyncio.Future[Answer] = field(repr=False)  # set when the press lands in this process


class SlackApprover:
    """An `Approver` for Slack threads; `on_action` (registered by `register_approval`) takes the presses.

    With a `book` (the database; BotRuntime attaches it once the database is ready) a press on any
    replica decides, and the asking process reads the answer back every `poll` seconds; without one,
    answers stay in this process.
    """

    def __init__(
        self,
        client: AsyncWebClient,
        timeout: float,
        metrics: Metrics | None = None,
        *,
        book: ApprovalBook | None = None,
        poll: float = 1.0,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._metrics = metrics
        self.book = book
        self._poll = poll
        self._pending: dict[str, _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return len(self._pending)

    async def approve(self, spec: ToolSpec, arguments: Mapping[str, Any], context: ToolContext) -> bool:
        asker = context.user_id
        if not asker:
            return self._count(False, "failed")  # nobody to ask: the call does not run
        request_id = secrets.token_urlsafe(12)
        where = context.key
        extra = {"channel": where.channel_id, "thread_ts": where.thread_ts, "tool": spec.name}
        try:
            if self.book is not None:
                await self.book.open(request_id, where, asker, spec.name)
            posted = await self._client.chat_postMessage(
                channel=where.channel_id,
                thread_ts=where.thread_ts,
                text=f"Approve a call of {spec.name}?",
                blocks=question_blocks(spec, arguments, asker, request_id, self._timeout),
            )
        except UNAVAILABLE as exc:
            log.warning("approval not asked: database unavailable: %s", error_reason(exc), extra=extra)
            return self._count(False, "failed")
        except SLACK_CALL_ERRORS as exc:
            log.warning("approval not asked: %s", call_error_reason(exc), extra=extra)
            return self._count(False, "failed")
        ts = str(posted.get("ts", ""))
        pending = _Pending(asker, asyncio.get_running_loop().create_future())
        self._pending[request_id] = pending
        try:
            answer = await self._wait(request_id, pending)
        except asyncio.CancelledError:
            # The reply was stopped: say so without holding up the cancellation.
            self._spawn(self._show(where.channel_id, ts, spec, arguments, "Not run: the reply was stopped"))
            raise
        finally:
            self._pending.pop(request_id, None)
        if answer is None:
            approved, decision = False, "timed_out"
            outcome = f"⏱️ No answer within {_duration(self._timeout)}: not run"
        elif answer.by is None:
            approved, decision, outcome = False, "denied", "Not run: the bot is shutting down"
        else:
            approved, decision = answer.approved, "approved" if answer.approved else "denied"
            outcome = ("✅ Approved" if approved else "❌ Denied") + f" by <@{answer.by}>"
        await self._show(where.channel_id, ts, spec, arguments, outcome)
        log.info("tool approval %s", decision, extra=extra)
        return self._count(approved, decision)

    async def _wait(self, request_id: str, pending: _Pending) -> Answer | None:
        """The answer, from a press in this process or (with a book) any other; None: none in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while (left := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(pending.answer), min(left, self._poll))
            if self.book is not None:
                try:
                    answer = await self.book.answer(request_id)
                except UNAVAILABLE:
                    answer = None  # a press here still lands; at the deadline it is a no
                if answer is not None:
                    return answer
        if pending.answer.done():
            return pending.answer.result()
        if self.book is None:
            return None
        try:
            return await self.book.expire(request_id)  # a press that won the race still counts
        except UNAVAILABLE:
            return None

    async def on_action(self, body: Mapping[str, Any], client: AsyncWebClient) -> None:
        """A press on Approve or Deny (already acked)."""
        action = (body.get("actions") or [{}])[0]
        user = str((body.get("user") or {}).get("id", ""))
        channel = str(
            (body.get("channel") or {}).get("id", "") or (body.get("container") or {}).get("channel_id", "")
        )
        thread_ts = (body.get("message") or {}).get("thread_ts")
        request_id = str(action.get("value", ""))
        approved = action.get("action_id") == APPROVE
        pending = self._pending.get(request_id)
        if self.book is not None:
            try:
                outcome = await self.book.press(request_id, user, approved)
            except UNAVAILABLE as exc:
                log.warning("approval press not recorded: %s", error_reason(exc), extra={"channel": channel})
                await _ephemeral(client, channel, user, thread_ts, NOT_RECORDED)
                return
        elif pending is None or pending.answer.done():
            outcome = PressOutcome(Press.NOT_WAITING)
        elif user != pending.asker:
            outcome = PressOutcome(Press.NOT_THE_ASKER, pending.asker)
        else:
            outcome = PressOutcome(Press.RECORDED, pending.asker)
        if outcome.press is Press.NOT_WAITING:
            await _ephemeral(client, channel, user, thread_ts, NOT_WAITING)
        elif outcome.press is Press.NOT_THE_ASKER:
            await _ephemeral(client, channel, user, thread_ts, ONLY_THE_ASKER.format(asker=outcome.asker))
        elif pending is not None and not pending.answer.done():
            pending.answer.set_result(Answer(approved, user))

    async def aclose(self) -> None:
        """Deny what still waits (shutdown) and let the message updates land."""
        for pending in self._pending.values():
            if not pending.answer.done():
                pending.answer.set_result(Answer(False, None))
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _show(
        self, channel: str, ts: str, spec: ToolSpec, arguments: Mapping[str, Any], outcome: str
    ) -> None:
        try:
            await self._client.chat_update(
                channel=channel,
                ts=ts,
                text=f"{spec.name}: {outcome}",
                blocks=decided_blocks(spec, arguments, outcome),
            )
        except SLACK_CALL_ERRORS as exc:
            log.warning(
                "approval message not updated: %s", call_error_reason(exc), extra={"channel": channel}
            )

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count(self, approved: bool, decision: str) -> bool:
        if self._metrics is not None:
            self._metrics.tool_approval(decision)
        return approved


def question_blocks(
    spec: ToolSpec, arguments: Mapping[str, Any], asker: str, request_id: str, timeout: float
) -> list[Block]:
    return [
        *_call_blocks(spec, arguments),
        ActionsBlock(
            block_id="tool_approval",
            elements=[
                ButtonElement(text="Approve", action_id=APPROVE, value=request_id, style="primary"),
                ButtonElement(text="Deny", action_id=DENY, value=request_id, style="danger"),
            ],
        ),
        ContextBlock(
            elements=[
                MarkdownTextObject(
                    text=f"Only <@{asker}> can answer. No answer within {_duration(timeout)} means no."
                )
            ]
        ),
    ]


def decided_blocks(spec: ToolSpec, arguments: Mapping[str, Any], outcome: str) -> list[Block]:
    return [*_call_blocks(spec, arguments), ContextBlock(elements=[MarkdownTextObject(text=outcome)])]


def _call_blocks(spec: ToolSpec, arguments: Mapping[str, Any]) -> list[Block]:
    return [
        SectionBlock(
            text=MarkdownTextObject(text=f"The assistant wants to run *{mrkdwn_escape(spec.name)}* with:")
        ),
        SectionBlock(text=MarkdownTextObject(text=arguments_text(arguments))),
    ]


def arguments_text(arguments: Mapping[str, Any], limit: int = MAX_ARGUMENTS_CHARS) -> str:
    """The arguments as indented JSON in a code block: cut to `limit`, escaped for mrkdwn, a fence inside
    them broken (it would end the block early), and every mention defused."""
    text = json.dumps(dict(arguments), indent=2, ensure_ascii=False, default=str) if arguments else "{}"
    if len(text) > limit:
        text = text[:limit] + f"\n… ({len(text) - limit:,} more characters)"
    text = mrkdwn_escape(text).replace("```", "`\u200b``")
    return defuse(f"```\n{text}\n```")


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds:g} second{'s' if seconds != 1 else ''}"


async def _ephemeral(client: AsyncWebClient, channel: str, user: str, thread_ts: Any, text: str) -> None:
    if not channel or not user:
        return
    try:
        await client.chat_postEphemeral(channel=channel, user=user, text=text, thread_ts=thread_ts)
    except SLACK_CALL_ERRORS as exc:
        log.info("approval note not shown: %s", call_error_reason(exc), extra={"channel": channel})


async def on_approval_action(
    ack: Callable[[], Awaitable[None]],
    body: dict[str, Any],
    client: AsyncWebClient,
    context: AsyncBoltContext,
) -> None:
    await ack()
    approver = context[APPROVER]
    assert isinstance(approver, SlackApprover)
    await approver.on_action(body, client)


def register_approval(app: AsyncApp, approver: SlackApprover) -> None:
    """Listen for the buttons (actions only: no catch-all of events can shadow them)."""
    app.action(ACTIONS, middleware=[AttachToContext(APPROVER, approver)])(on_approval_action)
