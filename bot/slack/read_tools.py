"""The Slack-reading tools the model may call: `slack_read_thread` and `slack_read_channel`.

Both read through `SlackReader`, which checks that the asking person could read the conversation
themselves; a refusal is an error result the model can read and explain. Without arguments they read
the conversation the person is asking in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.conversation.tools import Tool, ToolContext, ToolResult, ToolSpec
from bot.metrics import Metrics
from bot.slack.people import UserDirectory
from bot.slack.read_access import ReadAccess, ReadRefused
from bot.slack.reading import ReadLimits, SlackReader, Transcript, parse_since, thread_of

DEFAULT_LIMIT = 50


def _limit_schema(limits: ReadLimits) -> dict[str, Any]:
    return {
        "type": "integer",
        "minimum": 1,
        "maximum": limits.max_messages,
        "description": f"At most this many messages (default {DEFAULT_LIMIT}); the newest are kept.",
    }


def _refused(exc: ReadRefused) -> ToolResult:
    return ToolResult(f"error: {exc.code}: {exc.message}", ok=False, detail=exc.code.replace("_", " "))


def _read(transcript: Transcript) -> ToolResult:
    detail = f"{transcript.messages} messages read"
    if transcript.left_out:
        detail += f", {transcript.left_out} left out"
    return ToolResult(transcript.text, detail=detail)


def _limit(arguments: Mapping[str, Any]) -> int:
    value = arguments.get("limit", DEFAULT_LIMIT)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("limit must be a number")
    return int(value)


@dataclass(frozen=True)
class SlackReadThread:
    reader: SlackReader

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name="slack_read_thread",
            description=(
                "Read the messages of a Slack thread the asking person can see (author names and UTC "
                "times, oldest first). Without arguments: the thread of this conversation. Give a "
                "message link, or a channel id and the thread's root ts."
            ),
            parameters={
                "type": "object",
                "properties": {
                    "channel": {
                        "type": "string",
                        "description": "Channel id (C…, G…, D…) or a message link.",
                    },
                    "thread_ts": {"type": "string", "description": "The ts of the thread's root message."},
                    "limit": _limit_schema(self.reader.limits),
                },
            },
        )

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        raw = str(arguments.get("channel") or "")
        try:
            linked = thread_of(raw)
            if linked is not None:
                channel, thread_ts = linked
            elif raw:
                channel = await self.reader.channel_id(raw) or ""
                thread_ts = str(arguments.get("thread_ts") or "")
            else:  # this conversation's thread
                channel = context.key.channel_id
                thread_ts = str(arguments.get("thread_ts") or context.key.thread_ts)
            if not channel or not thread_ts:
                return ToolResult(
                    "error: invalid_arguments: give a message link, or channel and thread_ts", ok=False
                )
            limit = _limit(arguments)
            asker = await self.reader.asker(context.person, context.user_id, context.key.team_id)
            transcript = await self.reader.thread(channel, thread_ts, limit, asker, context.user_id)
        except ValueError as exc:
            return ToolResult(f"error: invalid_arguments: {exc}", ok=False)
        except ReadRefused as exc:
            return _refused(exc)
        return _read(transcript)


@dataclass(frozen=True)
class SlackReadChannel:
    reader: SlackReader

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name="slack_read_channel",
            description=(
                "Read a Slack channel's recent top-level messages that the asking person can see (author "
                "names and UTC times, oldest first; thread replies not included). Without a channel: the "
                "channel of this conversation."
            ),
            parameters={
                "type": "object",
                "properties": {
                    "channel": {"type": "string", "description": "Channel id (C…, G…, D…) or #name."},
                    "since": {
                        "type": "string",
                        "description": "How far back: 90m, 24h, 7d, or an ISO date/time (default 24h).",
                    },
                    "limit": _limit_schema(self.reader.limits),
                },
            },
        )

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        raw = str(arguments.get("channel") or "")
        try:
            channel = await self.reader.channel_id(raw) if raw else context.key.channel_id
            if not channel:
                return ToolResult(f"error: channel_not_found: no channel {raw!r} that I am in", ok=False)
            since = parse_since(str(arguments["since"]) if arguments.get("since") else None)
            limit = _limit(arguments)
            asker = await self.reader.asker(context.person, context.user_id, context.key.team_id)
            transcript = await self.reader.channel(channel, since, limit, asker, context.user_id)
        except ValueError as exc:
            return ToolResult(f"error: invalid_arguments: {exc}", ok=False)
        except ReadRefused as exc:
            return _refused(exc)
        return _read(transcript)


def slack_read_tools(
    client: AsyncWebClient,
    people: UserDirectory,
    limits: ReadLimits,
    *,
    bot_user_id: str | None = None,
    access: ReadAccess | None = None,
    metrics: Metrics | None = None,
) -> Sequence[Tool]:
    """The two Slack-reading tools, for the tool registry (`TOOLS_ENABLED` names them)."""
    access = access or ReadAccess(client)
    reader = SlackReader(client, people, access, limits, bot_user_id=bot_user_id, metrics=metrics)
    return (SlackReadThread(reader), SlackReadChannel(reader))


def read_tools_of(reader: SlackReader) -> Sequence[Tool]:
    """The tools over a reader the process already has (shared with the summaries and their caches)."""
    return (SlackReadThread(reader), SlackReadChannel(reader))
