"""The `/usage` slash command: the caller's own usage, answered ephemerally (only they see it).

"Today" and "this month" are the caller's own, in the time zone of their Slack profile; when Slack
cannot say (look-up failed, no or unknown zone) they are counted in USAGE_DIGEST_TZ.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import ClientError
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.quota import Quotas
from bot.slack.digest_blocks import SlackMessage, personal_message
from bot.slack.people import UserDirectory
from bot.storage.db import UNAVAILABLE as DATABASE_ERRORS
from bot.usage.limits import Subject
from bot.usage.personal import PersonalUsage, personal_usage, quotas_left

log = logging.getLogger(__name__)

COMMAND = "/usage"
UNAVAILABLE = "Sorry, your usage numbers are unavailable right now. Please try again in a minute."


def register_usage_command(
    app: AsyncApp,
    sessions: async_sessionmaker[AsyncSession],
    tz: ZoneInfo,
    people: UserDirectory | None = None,
    quota: Quotas | None = None,
) -> None:
    """`tz` is the fallback zone; `people` finds each caller's own (a directory of its own if None);
    `quota` adds what is left of the caller's limits."""
    directory = people if people is not None else UserDirectory(app.client)

    async def on_usage(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        # Ack first: Slack shows an error to the person if there is no answer within 3 seconds.
        await ack()
        user_id = str(command.get("user_id", ""))
        zone = await caller_zone(directory, user_id, tz)
        try:
            async with sessions() as session:
                usage = await personal_usage(session, user_id, zone)
            usage = await _with_quotas(usage, quota, str(command.get("team_id", "")))
            message = personal_message(usage)
        except DATABASE_ERRORS as exc:
            log.warning("/usage: database unavailable: %s", type(exc).__name__, extra={"user_id": user_id})
            message = SlackMessage(text=UNAVAILABLE, blocks=[])
        await _answer(respond, message, user_id)

    app.command(COMMAND)(on_usage)


async def _with_quotas(usage: PersonalUsage, quota: Quotas | None, team_id: str) -> PersonalUsage:
    if quota is None or not team_id:
        return usage
    uses = await quota.uses(Subject(team_id, None, usage.user_id))
    return replace(usage, quotas=quotas_left(uses, quota.tz))


async def caller_zone(people: UserDirectory, user_id: str, fallback: ZoneInfo) -> ZoneInfo:
    person = await people.lookup(user_id)
    if person is None or not person.tz:
        return fallback
    try:
        return ZoneInfo(person.tz)
    except (ZoneInfoNotFoundError, ValueError):
        log.info("/usage: unknown time zone %r in the profile", person.tz, extra={"user_id": user_id})
        return fallback


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
