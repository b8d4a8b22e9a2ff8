"""Who may read a Slack conversation through the bot: the bot must be in it, and so must the asker.

A public channel is open to the workspace's full members; guests and people from other
organisations (Slack Connect) see only the channels they are in. A private channel, a group DM or a
DM is read only for its members, found with `conversations.members` (paginated). Both look-ups are
Tier 3 and shared by every turn of the workspace, so their answers are cached for a short while: a
person removed from a channel can read it through the bot for at most `ttl` seconds more.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.conversation.person import Person
from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason

CACHE_TTL = 60.0
CACHE_ENTRIES = 2_000
MEMBER_PAGE = 1_000  # conversations.members' largest page
MEMBER_PAGES = 20  # 20,000 members: past that a private conversation is refused rather than guessed
# conversations.list is Tier 2 (20 a minute): the names are listed at most once a minute, and kept
# for ten (a channel renamed meanwhile is found by its new name after that, by its id at once).
NAMES_TTL = 600.0
NAMES_RELOAD_AFTER = 60.0
NAME_PAGES = 10  # 10,000 channels


class ReadRefused(Exception):
    """The conversation cannot be read for this person; `code` is for the model, `message` for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Conversation:
    channel_id: str
    name: str | None  # "general"; None for a DM
    public: bool  # a public channel of the workspace
    direct: bool  # a DM (`user` is the person the bot talks to)
    dm_user: str | None


class ReadAccess:
    """`check(channel, asker)`: the conversation, or ReadRefused; one instance per process."""

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        ttl: float = CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._ttl, self._clock = ttl, clock
        self._info: OrderedDict[str, tuple[float, Conversation]] = OrderedDict()
        self._members: OrderedDict[str, tuple[float, frozenset[str]]] = OrderedDict()
        self._names: dict[str, str] = {}  # channel name -> id, the bot's channels and public ones
        self._names_loaded: float | None = None

    async def check(self, channel_id: str, asker: Person | None, user_id: str | None) -> Conversation:
        if not user_id:
            raise ReadRefused("not_allowed", "I can only read Slack for a person who asks.")
        conversation = await self.conversation(channel_id)
        if conversation.direct:
            if conversation.dm_user != user_id:
                raise ReadRefused("not_allowed", "That is someone else's direct message with me.")
            return conversation
        limited = asker is None or asker.is_guest or asker.is_external
        if conversation.public and not limited:
            return conversation
        if user_id not in await self._members_of(channel_id):
            where = "that channel" if conversation.public else "that private conversation"
            raise ReadRefused("not_allowed", f"You are not a member of {where}, so I won't read it for you.")
        return conversation

    async def conversation(self, channel_id: str) -> Conversation:
        cached = self._cached(self._info, channel_id)
        if isinstance(cached, Conversation):
            return cached
        try:
            response = await self._client.conversations_info(channel=channel_id)
        except SLACK_CALL_ERRORS as exc:
            raise _refusal(exc) from None
        info = response.get("channel")
        info = info if isinstance(info, dict) else {}
        direct = info.get("is_im") is True
        if not direct and info.get("is_member") is False:
            raise ReadRefused("not_in_channel", "I am not a member of that channel; invite me to read it.")
        conversation = Conversation(
            channel_id=channel_id,
            name=str(info["name"]) if isinstance(info.get("name"), str) else None,
            public=info.get("is_channel") is True and info.get("is_private") is not True,
            direct=direct,
            dm_user=str(info["user"]) if direct and isinstance(info.get("user"), str) else None,
        )
        self._store(self._info, channel_id, conversation)
        return conversation

    async def channel_named(self, name: str) -> str | None:
        """The id of the channel called `name` ("general" or "#general"), or None when there is none."""
        name = name.strip().lstrip("#").lower()
        now = self._clock()
        age = None if self._names_loaded is None else now - self._names_loaded
        # A name not in a recent list is not looked for again at once: a typo costs one Tier 2 call.
        if age is not None and age < NAMES_TTL and (name in self._names or age < NAMES_RELOAD_AFTER):
            return self._names.get(name)
        names: dict[str, str] = {}
        cursor: str | None = None
        try:
            for _ in range(NAME_PAGES):
                response = await self._client.conversations_list(
                    types="public_channel,private_channel", exclude_archived=True, limit=1000, cursor=cursor
                )
                for channel in response.get("channels") or []:
                    if isinstance(channel, dict) and channel.get("name") and channel.get("id"):
                        names[str(channel["name"]).lower()] = str(channel["id"])
                cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
                if cursor is None:
                    break
        except SLACK_CALL_ERRORS as exc:
            raise _refusal(exc) from None
        self._names, self._names_loaded = names, now
        return names.get(name)

    async def _members_of(self, channel_id: str) -> frozenset[str]:
        cached = self._cached(self._members, channel_id)
        if isinstance(cached, frozenset):
            return cached
        members: set[str] = set()
        cursor: str | None = None
        try:
            for _ in range(MEMBER_PAGES):
                response = await self._client.conversations_members(
                    channel=channel_id, limit=MEMBER_PAGE, cursor=cursor
                )
                members.update(m for m in response.get("members") or [] if isinstance(m, str))
                cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
                if cursor is None:
                    break
            else:
                raise ReadRefused("too_large", "That conversation has too many members for me to check.")
        except SLACK_CALL_ERRORS as exc:
            raise _refusal(exc) from None
        found = frozenset(members)
        self._store(self._members, channel_id, found)
        return found

    def _cached(self, cache: OrderedDict[str, tuple[float, Any]], key: str) -> Any:
        entry = cache.get(key)
        if entry is None or entry[0] <= self._clock():
            cache.pop(key, None)
            return None
        cache.move_to_end(key)
        return entry[1]

    def _store(self, cache: OrderedDict[str, tuple[float, Any]], key: str, value: Any) -> None:
        cache[key] = (self._clock() + self._ttl, value)
        cache.move_to_end(key)
        while len(cache) > CACHE_ENTRIES:
            cache.popitem(last=False)


def _refusal(exc: BaseException) -> ReadRefused:
    """A failed Slack call as the refusal the model and the person read."""
    reason = call_error_reason(exc)
    if reason == "channel_not_found":
        return ReadRefused(reason, "I can't find that channel (or I am not in it).")
    if reason == "not_in_channel":
        return ReadRefused(reason, "I am not a member of that channel; invite me to read it.")
    if isinstance(exc, SlackApiError) and exc.response.status_code == 429:
        return ReadRefused("rate_limited", "Slack is limiting how fast I read; try again in a minute.")
    return ReadRefused("unavailable", f"Slack did not answer ({reason}); try again in a minute.")
