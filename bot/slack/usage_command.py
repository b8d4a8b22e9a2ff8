"""The `/usage` slash command: the caller's own usage, answered ephemerally (only they see it)."""

from __future__ import annotations

import logging
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import ClientError
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.slack.digest_blocks import SlackMessage, personal_message
from bot.usage.personal import personal_usage

log = logging.getLogger(__name__)

COMMAND = "/usage"
UNAVAILABLE = "Sorry, your usage numbers are unavailable right now. Please try again in a minute."


def register_usage_command(app: AsyncApp, sessions: async_sessionmaker[AsyncSession], tz: ZoneInfo) -> None:
    async def on_usage(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        # Ack first: Slack shows an error to the person if there is no answer within 3 seconds.
        await ack()
        user_id = str(command.get("user_id", ""))
        try:
            async with sessions() as session:
                message = personal_message(await personal_usage(session, user_id, tz))
        except (SQLAlchemyError, OSError) as exc:
            log.warning("/usage: database unavailable: %s", type(exc).__name__, extra={"user_id": user_id})
            message = SlackMessage(text=UNAVAILABLE, blocks=[])
        await _answer(respond, message, user_id)

    app.command(COMMAND)(on_usage)


async def _answer(respond: AsyncRespond, message: SlackMessage, user_id: str) -> None:
    try:
        response = await respond(
            text=message.text,
            blocks=message.blocks or None,
            response_type="ephemeral",
            replace_original=False,
        )
    except (ClientError, TimeoutError, OSError) as exc:
        log.warning("/usage: answer not delivered: %s", type(exc).__name__, extra={"user_id": user_id})
        return
    if response.status_code != 200:
        log.warning("/usage: response_url answered %s", response.status_code, extra={"user_id": user_id})
