"""Housekeeping while the bot runs: finish replies left `streaming` by a crash, purge old dedupe rows."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.slack.recovery import recover_interrupted_replies
from bot.storage.db import error_reason
from bot.storage.dedupe import purge_events
from bot.storage.models import utcnow

log = logging.getLogger(__name__)

# Slack retries an event for about 5 minutes; a day of dedupe rows is plenty and stays small.
DEDUPE_KEEP = timedelta(hours=24)


class Maintenance:
    """`stale_after`: how old a `streaming` reply must be before another process may finish it.

    With SQLite there is only one process, so at start-up everything still streaming is stale; with
    PostgreSQL other replicas may be streaming, so only replies older than the longest possible
    answer are touched.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        client: AsyncWebClient,
        *,
        stale_after: timedelta,
        single_process: bool,
        every: float = 60.0,
    ) -> None:
        self._sessions = sessions
        self._client = client
        self._stale_after = stale_after
        self._single_process = single_process
        self._every = every

    async def at_start_up(self) -> None:
        cutoff = utcnow() if self._single_process else utcnow() - self._stale_after
        await self.run_once(cutoff)

    async def run_once(self, started_before: datetime) -> None:
        try:
            await recover_interrupted_replies(self._sessions, self._client, started_before)
            async with self._sessions.begin() as session:
                purged = await purge_events(session, DEDUPE_KEEP)
            if purged:
                log.info("purged %d old dedupe rows", purged)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("maintenance skipped, database unavailable: %s", error_reason(exc))

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            await self.run_once(utcnow() - self._stale_after)
