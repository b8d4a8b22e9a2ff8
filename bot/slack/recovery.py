"""Finishing replies that a crashed process left `streaming`: the Slack message gets an interrupted note."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.slack.text import MAX_MESSAGE_CHARS, defuse, find_split, mrkdwn_escape
from bot.storage import conversations as repo
from bot.storage.models import ConversationKind, MessageStatus

log = logging.getLogger(__name__)

NOTE_RESTARTED = "This answer was interrupted because the bot restarted. Please ask again."


def last_part(content: str, messages: int, limit: int = MAX_MESSAGE_CHARS) -> str:
    """The part of `content` that the last of `messages` Slack messages shows (the renderer's split)."""
    start, carry = 0, ""
    for _ in range(messages - 1):
        body = carry + content[start:]
        if len(body) <= limit:
            break
        point = find_split(body, limit)
        start += point.cut - len(carry)
        carry = point.reopen
    body = carry + content[start:]
    return find_split(body, limit).head(body) if len(body) > limit else body


async def recover_interrupted_replies(
    sessions: async_sessionmaker[AsyncSession], client: AsyncWebClient, started_before: datetime
) -> int:
    """Edit each stale reply's last message to its saved text plus a note; mark it interrupted."""
    async with sessions() as session:
        stale = await repo.stale_streaming_messages(session, started_before)
    for message, conversation in stale:
        refs = message.slack_ts_all or ([message.slack_ts] if message.slack_ts else [])
        if refs and conversation.kind is not ConversationKind.TERMINAL:
            await _show_interrupted(
                client, conversation.channel_id, refs[-1], last_part(message.content, len(refs))
            )
        async with sessions.begin() as session:
            await repo.finish_message(
                session,
                message.id,
                content=message.content,
                status=MessageStatus.INTERRUPTED,
                slack_refs=refs,
            )
    if stale:
        log.info("recovered %d interrupted replies", len(stale))
    return len(stale)


async def _show_interrupted(client: AsyncWebClient, channel: str, ts: str, body: str) -> None:
    body = defuse(body)  # the model's text: it must not notify anyone (see bot.slack.text.defuse)
    warning = f":warning: _{mrkdwn_escape(NOTE_RESTARTED)}_"
    note: dict[str, Any] = {"type": "context", "elements": [{"type": "mrkdwn", "text": warning}]}
    blocks: list[dict[str, Any]] = [{"type": "markdown", "text": body}, note] if body.strip() else [note]
    try:
        await client.chat_update(channel=channel, ts=ts, text=body or NOTE_RESTARTED, blocks=blocks)
    except SlackApiError as exc:
        log.warning(
            "could not mark reply %s in %s as interrupted: %s", ts, channel, exc.response.get("error")
        )
