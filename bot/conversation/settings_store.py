"""Channel settings from the database, behind a short in-process cache; saving audits the change.

Every turn reads its channel's settings, so they are cached. A save in this process drops the entry
at once; other replicas see it when their entry expires (`ttl`, a few seconds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.channel_settings import DEFAULT_CHANNEL_SETTINGS, ChannelMode, ChannelSettings
from bot.storage import channel_settings as repo
from bot.storage.channel_settings import AuditEntry as AuditEntry  # what `recent_changes` returns
from bot.storage.db import UNAVAILABLE, error_reason
from bot.storage.models import ChannelSettingsRow

log = logging.getLogger(__name__)

TTL_SECONDS = 5.0  # how long another replica may answer with a channel's old settings
MAX_ENTRIES = 10_000
AUDIT_CHANNEL_SETTINGS = "channel_settings"

_Key = tuple[str, str]


def settings_as_json(settings: ChannelSettings) -> dict[str, object]:
    """Settings as plain JSON values, as the row and the audit log keep them (tools: a sorted list)."""
    values = asdict(settings)
    values["mode"] = settings.mode.value
    values["tools"] = None if settings.tools is None else sorted(settings.tools)
    return values


def _from_row(row: ChannelSettingsRow) -> ChannelSettings:
    try:
        mode = ChannelMode(row.mode)
    except ValueError:
        mode = ChannelMode.THREADS  # a mode written by newer code: the default until it is upgraded
    return ChannelSettings(
        mode=mode,
        system_prompt=row.system_prompt,
        replace_prompt=row.replace_prompt,
        model=row.model,
        max_output_tokens=row.max_output_tokens,
        followups=row.followups,
        tools=None if row.tools is None else frozenset(row.tools),
    )


class ChannelSettingsStore:
    """A ChannelSettingsSource on the database, and where admins' changes are saved and audited."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        ttl: float = TTL_SECONDS,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._ttl, self._max_entries, self._clock = ttl, max_entries, clock
        self._entries: OrderedDict[_Key, tuple[float, ChannelSettings]] = OrderedDict()
        # Bumped by every change seen here: a read that began before a save must not cache what it read.
        self._generation = 0
        self._reading: dict[_Key, asyncio.Future[ChannelSettings]] = {}

    async def for_channel(self, team_id: str, channel_id: str) -> ChannelSettings:
        """The channel's settings (the defaults if none were set).

        While the database is away the last settings read are used, however old; with none cached
        the database's error is raised (bot.storage.db.UNAVAILABLE).
        """
        key = (team_id, channel_id)
        entry = self._entries.get(key)
        now = self._clock()
        if entry is not None and entry[0] > now:
            self._entries.move_to_end(key)
            return entry[1]
        # One read per channel at a time: a burst of messages in a channel whose entry ran out waits
        # for the same query (shielded: one waiter's cancellation does not end the others' read).
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.ensure_future(self._read(key, entry, now))
            self._reading[key] = reading
            # Only its own entry: `invalidate` may have replaced it with a newer read meanwhile.
            reading.add_done_callback(lambda done: self._reading.get(key) is done and self._reading.pop(key))
        return await asyncio.shield(reading)

    async def _read(
        self, key: _Key, entry: tuple[float, ChannelSettings] | None, now: float
    ) -> ChannelSettings:
        generation = self._generation
        try:
            async with self._sessions() as session:
                row = await repo.find_channel_settings(session, *key)
                settings = DEFAULT_CHANNEL_SETTINGS if row is None else _from_row(row)
        except UNAVAILABLE as exc:
            if entry is None:
                raise
            log.warning("channel settings unavailable, using the last read: %s", error_reason(exc))
            return entry[1]
        if generation == self._generation:
            self._remember(key, settings, now)
        return settings

    def invalidate(self, team_id: str, channel_id: str) -> None:
        """Forget one channel's cached settings (this process saved them, or was told they changed)."""
        self._generation += 1
        self._entries.pop((team_id, channel_id), None)
        self._reading.pop((team_id, channel_id), None)  # a read begun before reads the old settings

    async def save(
        self, team_id: str, channel_id: str, settings: ChannelSettings, *, actor_id: str
    ) -> ChannelSettings | None:
        """Store the channel's settings and an audit row in one transaction; returns the settings
        before (None: the channel had none of its own). Raises the database's errors."""
        try:
            before = await self._save_once(team_id, channel_id, settings, actor_id)
        except IntegrityError:
            # Two first saves for one channel raced to insert its row; the other one's is there now.
            before = await self._save_once(team_id, channel_id, settings, actor_id)
        self.invalidate(team_id, channel_id)
        return before

    async def _save_once(
        self, team_id: str, channel_id: str, settings: ChannelSettings, actor_id: str
    ) -> ChannelSettings | None:
        async with self._sessions.begin() as session:
            row = await repo.find_channel_settings(session, team_id, channel_id, for_update=True)
            before = None if row is None else _from_row(row)
            after = settings_as_json(settings)
            await repo.write_channel_settings(session, row, team_id, channel_id, after, actor_id=actor_id)
            await repo.add_audit(
                session,
                team_id=team_id,
                actor_id=actor_id,
                target_kind="channel",
                target_id=channel_id,
                action=AUDIT_CHANNEL_SETTINGS,
                # A channel without a row had the defaults: the log compares with those.
                before=settings_as_json(before or DEFAULT_CHANNEL_SETTINGS),
                after=after,
            )
        return before

    async def configured_channels(self, team_id: str, limit: int = 20) -> list[tuple[str, ChannelSettings]]:
        """Channels with their own settings, most recently changed first (for the admins' App Home)."""
        async with self._sessions() as session:
            rows = await repo.channel_settings_rows(session, team_id, limit)
            return [(row.channel_id, _from_row(row)) for row in rows]

    async def recent_changes(self, team_id: str, limit: int = 10) -> Sequence[AuditEntry]:
        """The workspace's audited changes, newest first (`/glm audit`)."""
        async with self._sessions() as session:
            return await repo.recent_audit(session, team_id, limit)

    def _remember(self, key: _Key, settings: ChannelSettings, now: float) -> None:
        self._entries[key] = (now + self._ttl, settings)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
