"""Reply leases: the process streaming a reply keeps renewing it, so recovery (in this or another
replica) touches only replies whose process died."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.storage import conversations as repo
from bot.storage.db import UNAVAILABLE, error_reason
from bot.storage.models import utcnow

log = logging.getLogger(__name__)

# A reply's lease: a replica's maintenance finishes a reply whose process stopped renewing it for
# this long (a process killed on PostgreSQL is found sooner, by its turn places and its listener:
# bot.storage.conversations.HOLDER_GONE_AFTER).
LEASE_SECONDS = 30.0
# Three renewals per lease: one lost write (a blip) does not let another replica take the reply.
# Each streaming reply renews its own (the 5 s checkpoints do it as they save text): at 6 s, the
# replies of bench (c) waiting minutes for their final edit cost twice the CPU per reply.
RENEW_SECONDS = 10.0

# Turn places: one statement renews all of a replica's places, so they are renewed often and their
# leases are short: a dead replica's waiting turns are adopted soon, and its replies found by
# presence 10 s after its places' last renewal.
PLACE_LEASE_SECONDS = 18.0
PLACE_RENEW_SECONDS = 6.0
# After a failed renewal (the database away): retry soon, so that when it returns this process
# renews before any maintenance run (here or in another replica) sees the lease expired.
RETRY_SECONDS = 1.5
# Renewals falling due this close together go out as one statement: bench (d)'s 500 replies waiting
# for their final edits renewed one transaction each, 12 % of the process's CPU (py-spy) in the burst.
BATCH_SECONDS = 1.0

# Replies some ReplyLease of this process is keeping alive: its own maintenance never recovers them,
# even when an outage let the lease in the row run out.
_KEPT_HERE: set[int] = set()


def kept_here() -> frozenset[int]:
    """The ids of the replies this process is streaming now."""
    return frozenset(_KEPT_HERE)


class ReplyLease:
    """Checkpoints renew the lease as they save text; `keep` writes only when none did for a while."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        lease: float = LEASE_SECONDS,
        renew_every: float = RENEW_SECONDS,
    ) -> None:
        self._sessions = sessions
        self._lease = timedelta(seconds=lease)
        self._renew_every = renew_every
        self._renewed_at: dict[int, float] = {}
        self._retry = min(RETRY_SECONDS, renew_every)
        self._batch = _Renewals(sessions, self.until, min(BATCH_SECONDS, renew_every / 4))

    def until(self) -> datetime:
        """The expiry a write made now sets."""
        return utcnow() + self._lease

    def note(self, message_id: int) -> None:
        """A write (a checkpoint) renewed the lease just now."""
        if message_id in self._renewed_at:
            self._renewed_at[message_id] = time.monotonic()

    async def keep(self, message_id: int, ended: asyncio.Event) -> None:
        """Renew until the reply `ended`, whenever no checkpoint renewed it in time: while the model
        only thinks, or Slack is slow to take the final edit. Stopped by the event, not cancelled,
        so a renewal in flight finishes its transaction."""
        self._renewed_at[message_id] = time.monotonic()
        _KEPT_HERE.add(message_id)
        try:
            while not ended.is_set():
                due = self._renewed_at[message_id] + self._renew_every
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), max(0.0, due - time.monotonic()))
                if ended.is_set() or time.monotonic() < self._renewed_at[message_id] + self._renew_every:
                    continue  # the reply ended, or a checkpoint renewed the lease meanwhile
                try:
                    await self._batch.renew(message_id)
                except UNAVAILABLE as exc:
                    log.warning("could not renew a reply's lease: %s", error_reason(exc))
                    # Due again in RETRY_SECONDS rather than a whole period.
                    self._renewed_at[message_id] = time.monotonic() - self._renew_every + self._retry
                else:
                    self._renewed_at[message_id] = time.monotonic()
        finally:
            self._renewed_at.pop(message_id, None)
            _KEPT_HERE.discard(message_id)


class _Renewals:
    """Renewals due within `window` of the first go out together: one UPDATE for all of them."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], until: Callable[[], datetime], window: float
    ) -> None:
        self._sessions, self._until, self._window = sessions, until, window
        self._due: set[int] = set()
        self._write: asyncio.Future[None] | None = None

    async def renew(self, message_id: int) -> None:
        """Renew the reply's lease (with any others due meanwhile); raises the database's errors."""
        self._due.add(message_id)
        if self._write is None:
            self._write = asyncio.ensure_future(self._soon())
            # Retrieved even when every waiter was cancelled (shutdown): no "never retrieved" warning.
            self._write.add_done_callback(lambda done: done.cancelled() or done.exception())
        await asyncio.shield(self._write)  # one waiter's cancellation leaves the others' write alone

    async def _soon(self) -> None:
        try:
            await asyncio.sleep(self._window)
        finally:  # cancelled too (the loop closing): the next renewal starts a write of its own
            ids, self._due, self._write = self._due, set(), None
        ids &= _KEPT_HERE  # a reply that ended meanwhile is left as its end wrote it
        if ids:
            async with self._sessions.begin() as session:
                await repo.renew_leases(session, ids, self._until())
