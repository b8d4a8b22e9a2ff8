"""Who may change what: the bot's admins (ADMIN_USER_IDS, workspace admins and owners) and, for one
channel's settings, that channel's creator."""

from __future__ import annotations

import logging

from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason
from bot.slack.people import UserDirectory

log = logging.getLogger(__name__)

WHO_MAY_CONFIGURE = (
    "A channel's settings can be changed by the bot's admins (the workspace's admins and owners, "
    "and the people named in ADMIN_USER_IDS) and by the person who created the channel."
)


class AdminAccess:
    def __init__(self, people: UserDirectory, admins: frozenset[str]) -> None:
        self._people, self._admins = people, admins

    async def is_admin(self, user_id: str, team_id: str) -> bool:
        """A bot admin; when Slack cannot say who the person is, only ADMIN_USER_IDS count."""
        if user_id in self._admins:
            return True
        profile = await self._people.lookup(user_id)
        return profile is not None and profile.asker(admins=self._admins, workspace=team_id).is_admin

    async def may_configure(
        self, client: AsyncWebClient, user_id: str, team_id: str, channel_id: str
    ) -> bool:
        """An admin, or the channel's creator (conversations.info)."""
        if await self.is_admin(user_id, team_id):
            return True
        return await channel_creator(client, channel_id) == user_id


async def channel_creator(client: AsyncWebClient, channel_id: str) -> str | None:
    """Who created the channel; None for DMs, or when Slack cannot say right now."""
    try:
        response = await client.conversations_info(channel=channel_id)
    except SLACK_CALL_ERRORS as exc:
        log.info("conversations.info failed: %s", call_error_reason(exc), extra={"channel": channel_id})
        return None
    channel = response.get("channel")
    creator = channel.get("creator") if isinstance(channel, dict) else None
    return str(creator) if creator else None
