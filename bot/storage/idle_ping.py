"""Ping a pooled PostgreSQL connection before use only when it has sat idle: SQLAlchemy's
`pool_pre_ping`, minus the pings of connections used a moment ago.

`pool_pre_ping` pings on every checkout, and SQLAlchemy's asyncpg adapter pings inside a
transaction (BEGIN, ";", ROLLBACK: three round trips, for pgbouncer's transaction mode). In bench
(d) on PostgreSQL that was 8 checkouts and 25 of the 60 round trips of every reply (the server's
statement log). A connection that finished a statement a moment ago is as good as a ping, so only
one idle for `PING_AFTER_IDLE` seconds or more is pinged.

What the skipped ping would have caught (a server restart within that moment) fails the statement
instead, which a ping does not prevent for the statements under way either; SQLAlchemy then
invalidates the whole pool, as a failed ping does.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

PING_AFTER_IDLE = 1.0  # seconds
_CHECKED_IN = "bot_checked_in_at"  # in the entry's `info`, which a replaced connection starts empty


def ping_idle_connections(engine: AsyncEngine) -> None:
    """Register the checkin and checkout listeners on the engine's pool."""
    dialect = engine.sync_engine.dialect

    def checked_in(_dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
        entry.info[_CHECKED_IN] = time.monotonic()

    def checked_out(dbapi_connection: Any, entry: ConnectionPoolEntry, _proxy: Any) -> None:
        # Runs in SQLAlchemy's greenlet, as the pre-ping does: the adapter's ping may await.
        since = entry.info.get(_CHECKED_IN)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:
            return  # just connected, or used a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if not dialect.is_disconnect(exc, dbapi_connection, None):
                raise
            # The pool drops every connection as old as this one and checks out a new one.
            raise InvalidatePoolError(f"the idle connection was lost: {exc}") from None

    event.listen(engine.sync_engine, "checkin", checked_in)
    event.listen(engine.sync_engine, "checkout", checked_out)
