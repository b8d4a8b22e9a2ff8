"""Asking the person before a tool marked `needs_approval` runs: Approve / Deny buttons in the thread.

The bot posts the tool and its arguments (bounded, escaped, mentions defused: the model wrote them);
only the person who asked may answer (anyone else gets an ephemeral line); no answer within
TOOL_APPROVAL_TIMEOUT is a no; the message is then changed to show the decision, without buttons.

A request waits in this process: a button pressed on a request this process does not hold (another
replica's, or one from before a restart) is answered with an ephemeral line, and the process that
holds it still decides by its timeout, which denies. The tool never runs without a yes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    MarkdownTextObject,
    SectionBlock,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.conversation.tools import ToolContext, ToolSpec
from bot.metrics import Metrics
from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason
from bot.slack.text import defuse, mrkdwn_escape

log = logging.getLogger(__name__)

APPROVE, DENY = "tool_approval_approve", "tool_approval_deny"
ACTIONS = re.compile(f"^({APPROVE}|{DENY})$")
APPROVER = "glm_approver"  # the context key the approver is found under
MAX_ARGUMENTS_CHARS = 2_500  # a section's text may hold 3,000
ONLY_THE_ASKER = "Only <@{asker}>, who asked, can approve or deny this tool call."
NOT_WAITING = "This request is no longer waiting for an answer (it was answered, or it expired)."


@dataclass
class _Pending:
    asker: str
    answer: asyncio.Future[tuple[bool, str | None]] = field(repr=False)  # (approved, by whom)


class SlackApprover:
    """An `Approver` for Slack threads; `on_action` (registered by `register_approval`) takes the presses."""

    def __init__(self, client: AsyncWebClient, timeout: float, metrics: Metrics | None = None) -> None:
        self._client = client
        self._timeout = timeout
        self._metrics = metrics
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
        question = question_blocks(spec, arguments, asker, request_id, self._timeout)
        try:
            posted = await self._client.chat_postMessage(
                channel=where.channel_id,
                thread_ts=where.thread_ts,
                text=f"Approve a call of {spec.name}?",
                blocks=question,
            )
        except SLACK_CALL_ERRORS as exc:
            log.warning(
                "approval request not posted: %s",
                call_error_reason(exc),
                extra={"channel": where.channel_id, "thread_ts": where.thread_ts, "tool": spec.name},
            )
            return self._count(False, "failed")
        ts = str(posted.get("ts", ""))
        pending = _Pending(asker, asyncio.get_running_loop().create_future())
        self._pending[request_id] = pending
        try:
            approved, by = await asyncio.wait_for(pending.answer, self._timeout)
            decision = "approved" if approved else "denied"
            if by is None:
                outcome = "Not run: the bot is shutting down"
            else:
                outcome = ("✅ Approved" if approved else "❌ Denied") + f" by <@{by}>"
        except TimeoutError:
            approved, decision = False, "timed_out"
            outcome = f"⏱️ No answer within {_duration(self._timeout)}: not run"
        except asyncio.CancelledError:
            # The reply was stopped: say so without holding up the cancellation.
            self._spawn(self._show(where.channel_id, ts, spec, arguments, "Not run: the reply was stopped"))
            raise
        finally:
            self._pending.pop(request_id, None)
        await self._show(where.channel_id, ts, spec, arguments, outcome)
        log.info(
            "tool approval %s",
            decision,
            extra={"channel": where.channel_id, "thread_ts": where.thread_ts, "tool": spec.name},
        )
        return self._count(approved, decision)

    async def on_action(self, body: Mapping[str, Any], client: AsyncWebClient) -> None:
        """A press on Approve or Deny (already acked)."""
        action = (body.get("actions") or [{}])[0]
        user = str((body.get("user") or {}).get("id", ""))
        channel = str(
            (body.get("channel") or {}).get("id", "") or (body.get("container") or {}).get("channel_id", "")
        )
        thread_ts = (body.get("message") or {}).get("thread_ts")
        pending = self._pending.get(str(action.get("value", "")))
        if pending is None or pending.answer.done():
            await _ephemeral(client, channel, user, thread_ts, NOT_WAITING)
        elif user != pending.asker:
            await _ephemeral(client, channel, user, thread_ts, ONLY_THE_ASKER.format(asker=pending.asker))
        else:
            pending.answer.set_result((action.get("action_id") == APPROVE, user))

    async def aclose(self) -> None:
        """Deny what still waits (shutdown) and let the message updates land."""
        for pending in self._pending.values():
            if not pending.answer.done():
                pending.answer.set_result((False, None))
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


class AttachApprover(AsyncMiddleware):
    """Puts the process's approver into the context of the button presses, for the listener above."""

    def __init__(self, approver: SlackApprover) -> None:
        self._approver = approver

    async def async_process(
        self,
        *,
        req: AsyncBoltRequest,
        resp: BoltResponse,  # noqa: ARG002
        next: Callable[[], Awaitable[BoltResponse]],  # Bolt passes it by this name
    ) -> BoltResponse | None:
        req.context[APPROVER] = self._approver
        return await next()


def register_approval(app: AsyncApp, approver: SlackApprover) -> None:
    """Listen for the buttons (actions only: no catch-all of events can shadow them)."""
    app.action(ACTIONS, middleware=[AttachApprover(approver)])(on_approval_action)
