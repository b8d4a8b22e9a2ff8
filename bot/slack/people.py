"""Who a Slack user id is (name, time zone, admin, guest, team): users.info behind one small, bounded cache.

Entries expire after a TTL and the least recently used go first when the cache is full; a failed
look-up is not cached, so the next caller asks Slack again. One directory per process serves the
turns (names in messages), `/usage` (time zones) and the digest (top users).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.conversation.person import Person
from bot.slack.retries import with_rate_limit_retries

log = logging.getLogger(__name__)

MAX_ENTRIES = 10_000  # a busy workspace's active people; the least recently used go first
# users.info is Tier 4 (about 100 calls a minute per workspace, shared by every turn). A person names a
# handful of people in one message; a hostile one can name 10,000. Ten look-ups per message keep one
# message to a tenth of the minute's budget; the rest stay ids (`@U123`), which the model can still use.
LOOKUPS_PER_MESSAGE = 10
TTL_SECONDS = 3_600.0  # people rarely rename themselves or move zones; an hour of staleness is fine
LOOKUP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Profile:
    """What users.info says about a person that the bot uses."""

    user_id: str
    name: str  # the display name people see in Slack, else their full name, else the handle
    tz: str | None  # IANA zone from the profile, e.g. "Europe/Berlin"; None when Slack has none
    team_id: str | None = None  # the person's own workspace (another one for Slack Connect users)
    is_workspace_admin: bool = False  # a workspace admin, owner or primary owner
    is_guest: bool = False  # a single- or multi-channel guest

    def asker(self, *, admins: frozenset[str], workspace: str) -> Person:
        """The domain's facts about this person asking in `workspace` (the team the bot serves)."""
        return Person(
            user_id=self.user_id,
            team_id=self.team_id,
            is_admin=self.is_workspace_admin or self.user_id in admins,
            is_guest=self.is_guest,
            is_external=self.team_id is not None and self.team_id != workspace,
            name=self.name,
        )


def person_from(user: dict[str, object], user_id: str) -> Profile:
    profile = user.get("profile")
    profile = profile if isinstance(profile, dict) else {}
    name = (
        profile.get("display_name")
        or profile.get("real_name")
        or user.get("real_name")
        or user.get("name")
        or user_id
    )
    tz = user.get("tz")
    team = user.get("team_id")
    return Profile(
        user_id=user_id,
        name=str(name),
        tz=str(tz) if tz else None,
        team_id=str(team) if team else None,
        is_workspace_admin=any(
            user.get(flag) is True for flag in ("is_admin", "is_owner", "is_primary_owner")
        ),
        is_guest=user.get("is_restricted") is True or user.get("is_ultra_restricted") is True,
    )


class UserDirectory:
    def __init__(
        self,
        client: AsyncWebClient,
        *,
        max_entries: int = MAX_ENTRIES,
        ttl: float = TTL_SECONDS,
        timeout: float = LOOKUP_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # A short 429 (Retry-After within the look-up's timeout) is waited out rather than failed.
        self._client = with_rate_limit_retries(client, max_retries=2, max_wait=timeout / 2)
        self._pending: dict[str, asyncio.Future[Profile | None]] = {}
        self._max_entries = max_entries
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Profile]] = OrderedDict()

    @property
    def size(self) -> int:
        """How many people are cached now (never more than `max_entries`)."""
        return len(self._entries)

    def cached(self, user_id: str) -> Profile | None:
        """The person behind `user_id` if a fresh entry is cached; never calls Slack."""
        entry = self._entries.get(user_id)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[user_id]
            return None
        self._entries.move_to_end(user_id)
        return entry[1]

    async def lookup(self, user_id: str) -> Profile | None:
        """The person behind `user_id`, or None when Slack cannot say right now.

        Callers asking for the same person at once share one users.info call: a burst of messages
        from one person (or one channel's people) must not spend the Tier 4 budget once per message,
        and admission fails closed when the look-up fails.
        """
        cached = self.cached(user_id)
        if cached is not None:
            return cached
        pending = self._pending.get(user_id)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(user_id))
            self._pending[user_id] = pending
            pending.add_done_callback(lambda _: self._pending.pop(user_id, None))
        return await asyncio.shield(pending)

    async def _fetch(self, user_id: str) -> Profile | None:
        now = self._clock()
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._client.users_info(user=user_id)
        except SlackApiError as exc:
            log.info("users.info failed: %s", exc.response.get("error"), extra={"user_id": user_id})
            return None
        except (SlackClientError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("users.info unreachable: %s", type(exc).__name__, extra={"user_id": user_id})
            return None
        user = response.get("user")
        person = person_from(user if isinstance(user, dict) else {}, user_id)
        self._entries[user_id] = (now + self._ttl, person)
        self._entries.move_to_end(user_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return person

    async def names(self, user_ids: Iterable[str], *, lookups: int | None = None) -> dict[str, str]:
        """Display names of the ids Slack knows; ids it cannot resolve are left out.

        `lookups` bounds the users.info calls (None: no bound): ids past it are named only if cached.
        """
        ids = list(dict.fromkeys(user_ids))
        found = {uid: person for uid in ids if (person := self.cached(uid)) is not None}
        missing = [uid for uid in ids if uid not in found]
        if lookups is not None:
            missing = missing[: max(lookups, 0)]
        for person in await asyncio.gather(*(self.lookup(uid) for uid in missing)):
            if person is not None:
                found[person.user_id] = person
        return {uid: person.name for uid, person in found.items()}
