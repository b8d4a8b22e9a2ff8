"""The database half of readiness (the web server adds draining): does the database answer in time?

Probes get only `ok`/`unavailable`; the reason (host, driver error) goes to the log, at most once a
minute while an outage lasts, because a probe every few seconds would otherwise flood it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.storage.db import DatabaseError, check_database, describe

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 3.0  # below the Docker/k8s probe timeouts, so a hanging database still gets a 503
LOG_EVERY = 60.0


class Readiness:
    """`await database_ok()`: SELECT 1 within `timeout`, the reason logged at a bounded rate."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        timeout: float = CHECK_TIMEOUT,
        log_every: float = LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._timeout = timeout
        self._log_every = log_every
        self._clock = clock
        self._down_since_log: float | None = None  # when the last outage line was written
        self._failures_unlogged = 0

    async def database_ok(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await check_database(self._engine)
        except DatabaseError as exc:
            self._outage(str(exc))
            return False
        except TimeoutError:
            where = describe(self._engine.url)
            self._outage(f"database at {where} did not answer within {self._timeout:g}s")
            return False
        if self._down_since_log is not None:
            log.info("database reachable again")
            self._down_since_log, self._failures_unlogged = None, 0
        return True

    def _outage(self, reason: str) -> None:
        now = self._clock()
        if self._down_since_log is not None and now - self._down_since_log < self._log_every:
            self._failures_unlogged += 1
            return
        suppressed = self._failures_unlogged
        extra = f" ({suppressed} more failed checks since the last line)" if suppressed else ""
        log.warning("readiness: %s%s", reason, extra)
        self._down_since_log, self._failures_unlogged = now, 0
