"""People's display names for the model: `users.info` look-ups, bounded per message, cached a while."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable

from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason

log = logging.getLogger(__name__)

# users.info is Tier 4 (about 100 calls a minute per workspace, shared by every turn). A person names a
# handful of people in one message; a hostile one can name 10,000. Ten look-ups per message keep one
# message to a tenth of the minute's budget; the rest stay ids (`@U123`), which the model can still use.
LOOKUPS_PER_MESSAGE = 10
CACHE_SIZE = 10_000  # a busy workspace's active people; older entries are dropped first
CACHE_SECONDS = 3600.0  # a renamed person shows under the new name within the hour


class DisplayNames:
    """Display names by user id: an LRU cache with a time to live; failed look-ups are not cached."""

    def __init__(self, *, size: int = CACHE_SIZE, ttl: float = CACHE_SECONDS) -> None:
        self._size, self._ttl = size, ttl
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    async def resolve(
        self, client: AsyncWebClient, user_ids: Iterable[str], *, lookups: int = LOOKUPS_PER_MESSAGE
    ) -> dict[str, str]:
        """Names for the ids that are cached or looked up within `lookups` calls; others are absent."""
        names: dict[str, str] = {}
        for user_id in dict.fromkeys(user_ids):
            cached = self._get(user_id)
            if cached is not None:
                names[user_id] = cached
            elif lookups > 0:
                lookups -= 1
                found = await _look_up(client, user_id)
                if found is not None:
                    names[user_id] = self._put(user_id, found)
        return names

    def _get(self, user_id: str) -> str | None:
        entry = self._cache.get(user_id)
        if entry is None:
            return None
        name, expires = entry
        if expires <= time.monotonic():
            del self._cache[user_id]
            return None
        self._cache.move_to_end(user_id)
        return name

    def _put(self, user_id: str, name: str) -> str:
        self._cache[user_id] = (name, time.monotonic() + self._ttl)
        self._cache.move_to_end(user_id)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return name


async def _look_up(client: AsyncWebClient, user_id: str) -> str | None:
    try:
        user = (await client.users_info(user=user_id)).get("user") or {}
    except SLACK_CALL_ERRORS as exc:
        log.info("no display name for a user (%s); the id is shown instead", call_error_reason(exc))
        return None
    profile = user.get("profile") or {}
    name = profile.get("display_name") or user.get("real_name") or user.get("name")
    return str(name) if name else None
