"""Housekeeping while the bot runs: replay spooled ledger writes, finish replies whose process died,
purge old dedupe rows. Supervised: a failed run is logged and counted, and the next one comes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.lease import kept_here
from bot.conversation.ledger import Ledger
from bot.slack.edit_budget import EditBudgets
from bot.slack.recovery import recover_interrupted_replies
from bot.storage.conversations import LEGACY_STALE_AFTER
from bot.storage.db import UNAVAILABLE, error_reason
from bot.storage.dedupe import purge_events

log = logging.getLogger(__name__)

# Slack retries an event for about 5 minutes; a day of dedupe rows is plenty and stays small.
DEDUPE_KEEP = timedelta(hours=24)
# With 30 s leases, a crashed reply is finished within about 35 s (lease, one period, one call); on
# PostgreSQL a killed replica's within about 15 s (its places and listener say it is gone).
EVERY_SECONDS = 5.0


class MaintenanceMetrics(Protocol):
    def maintenance_failed(self) -> None: ...

    def maintenance_succeeded(self) -> None: ...


class Maintenance:
    """`single_process` (SQLite): at start-up nothing else can be streaming, so every reply left
    `streaming` is finished at once; otherwise (and always after start-up) only expired leases."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        client: AsyncWebClient,
        *,
        model: str,
        single_process: bool,
        ledger: Ledger | None = None,
        budgets: EditBudgets | None = None,
        metrics: MaintenanceMetrics | None = None,
        every: float = EVERY_SECONDS,
        legacy_after: timedelta = LEGACY_STALE_AFTER,
        presence: Callable[[], bool] | None = None,
    ) -> None:
        self._sessions = sessions
        self._client = client
        self._model = model
        self._single_process = single_process
        self._ledger = ledger
        self._budgets = budgets
        self._metrics = metrics
        self._every = every
        self._legacy_after = legacy_after
        self._presence = presence  # may a gone replica's replies be found by its listener's absence

    async def at_start_up(self) -> bool:
        """One run before serving; a failure is logged and counted, never stops the start."""
        return await self.run_once(ignore_leases=self._single_process)

    async def run_once(self, *, ignore_leases: bool = False) -> bool:
        try:
            if self._ledger is not None:
                # Spooled final texts first: a reply whose process only lost the database is not
                # one to mark as interrupted.
                await self._ledger.replay()
            await recover_interrupted_replies(
                self._sessions,
                self._client,
                model=self._model,
                budgets=self._budgets,
                ignore_leases=ignore_leases,
                kept=kept_here(),
                legacy_after=self._legacy_after,
                presence=self._presence is not None and self._presence(),
            )
            async with self._sessions.begin() as session:
                purged = await purge_events(session, DEDUPE_KEEP)
            if purged:
                log.info("purged %d old dedupe rows", purged)
        except asyncio.CancelledError:
            raise
        except UNAVAILABLE as exc:
            log.warning("maintenance skipped, database unavailable: %s", error_reason(exc))
            self._count(ok=False)
            return False
        except Exception:  # supervision: whatever broke this run, the next one still comes
            log.exception("maintenance run failed")
            self._count(ok=False)
            return False
        self._count(ok=True)
        return True

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            await self.run_once()

    def _count(self, *, ok: bool) -> None:
        if self._metrics is None:
            return
        if ok:
            self._metrics.maintenance_succeeded()
        else:
            self._metrics.maintenance_failed()
