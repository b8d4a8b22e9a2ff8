"""PostgreSQL LISTEN/NOTIFY for the replicas of one database: a turn ended, a stop was asked for.

One `SignalHub` per process keeps one dedicated asyncpg connection that LISTENs on every channel
subscribed to, and calls the subscribers with each payload. Signals are a shortcut, never the only
path: while the connection is down (an outage, a killed backend) the hub reconnects every
`reconnect_every` seconds, `connected` is False so waiters poll instead, and on reconnecting every
subscriber is called with None ("signals may have been missed: look again").
Senders do not need the hub: `notify` runs `pg_notify` in the caller's transaction, which delivers
on commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 1.0
# A connection can die without the socket saying so (a dropped route): a ping this often notices.
PING_SECONDS = 10.0
CONNECT_TIMEOUT = 5.0
# How the listening connection shows in pg_stat_activity (operators, and tests that kill it).
APPLICATION_NAME = "slackbot-signals"


def presence_name(holder: str) -> str:
    """The listening connection's `application_name`: while the replica `holder` lives, it is in
    pg_stat_activity; a killed process's connection ends at once (bot.storage.conversations reads it
    to find a dead replica's replies sooner than their leases)."""
    return f"{APPLICATION_NAME}:{holder}"


# What a subscriber is called with: the payload, or None when signals may have been missed.
Subscriber = Callable[[str | None], None]


async def notify(session: AsyncSession, channel: str, payload: str) -> None:
    """Signal `channel` when the caller's transaction commits (nothing is sent if it rolls back)."""
    await session.execute(select(func.pg_notify(channel, payload)))


# Query options SQLAlchemy's asyncpg dialect consumes itself; asyncpg would send them to the server.
_DIALECT_OPTIONS = ("prepared_statement_cache_size", "prepared_statement_name_func", "async_fallback")


def asyncpg_dsn(database_url: str) -> str:
    """The SQLAlchemy URL (postgresql+asyncpg://...) as asyncpg's own connect() reads it."""
    url = make_url(database_url).set(drivername="postgresql").difference_update_query(_DIALECT_OPTIONS)
    return url.render_as_string(hide_password=False)


class SignalHub:
    """`subscribe(channel, callback)`, then `start()`; `aclose()` at shutdown."""

    def __init__(
        self,
        dsn: str,
        *,
        reconnect_every: float = RECONNECT_SECONDS,
        ping_every: float = PING_SECONDS,
        name: str = APPLICATION_NAME,
    ) -> None:
        self._dsn = dsn
        self.name = name
        self._reconnect_every = reconnect_every
        self._ping_every = ping_every
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.connects = 0  # how many times a connection was made (tests watch reconnects)
        self._connected_at = 0.0

    def subscribe(self, channel: str, callback: Subscriber) -> None:
        """Before `start()`: the channels are LISTENed to on every (re)connect."""
        self._subscribers.setdefault(channel, []).append(callback)

    def start(self) -> None:
        """Connect in the background: start-up never waits for (or fails on) the listener."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="signal-hub")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close()

    async def _run(self) -> None:
        first = True
        while True:
            try:
                await self._connect()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                await self._close()  # connected but not listening: no connection left behind
                if first:
                    log.warning("signals: cannot listen yet, polling meanwhile (%s)", type(exc).__name__)
                first = False
                await asyncio.sleep(self._reconnect_every)
                continue
            if not first:
                log.info("signals: listening again")
            first = False
            self._everyone(None)  # what was sent while away is lost: everyone looks again
            await self._watch()
            log.warning("signals: lost the listening connection, polling until it is back")
            await self._close()
            await asyncio.sleep(self._reconnect_every)

    async def _connect(self) -> None:
        self._lost = asyncio.Event()
        conn = await asyncpg.connect(
            self._dsn, timeout=CONNECT_TIMEOUT, server_settings={"application_name": self.name}
        )
        self._conn = conn
        conn.add_termination_listener(self._terminated)
        for channel in self._subscribers:
            await conn.add_listener(channel, self._received)
        self.connected = True
        self.connects += 1
        self._connected_at = time.monotonic()

    async def _watch(self) -> None:
        """Until the connection is lost: a termination callback, or a ping that fails."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._ping_every)
            if self._lost.is_set() or self._conn is None or self._conn.is_closed():
                break
            try:
                await self._conn.execute("SELECT 1", timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                break
        self.connected = False

    async def _close(self) -> None:
        self.connected = False
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()  # no goodbye: the server may be gone

    def _terminated(self, conn: Any) -> None:
        if conn is not self._conn:
            return  # a connection given up earlier: the current one is fine
        self.connected = False
        self._lost.set()

    def steady(self, seconds: float) -> bool:
        """Connected without a break for `seconds`: after an outage every replica's listener was
        away, and the others' may not be back yet."""
        return self.connected and time.monotonic() - self._connected_at >= seconds

    def _received(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        for callback in self._subscribers.get(channel, ()):
            _call(callback, payload)

    def _everyone(self, payload: str | None) -> None:
        for callbacks in self._subscribers.values():
            for callback in callbacks:
                _call(callback, payload)


def _call(callback: Subscriber, payload: str | None) -> None:
    try:
        callback(payload)
    except Exception:
        log.exception("a signal subscriber failed")
