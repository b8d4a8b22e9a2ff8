"""Async engine and session factory; SQLite gets WAL and foreign keys, errors become DatabaseError."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from bot.storage.idle_ping import ping_idle_connections
from bot.storage.sqlite_driver import one_trip_dbapi

COMMAND_TIMEOUT = 15.0  # seconds; every query of a running bot is short (migrations pass None)


class DatabaseError(Exception):
    """The database is misconfigured or unreachable; the message is safe to show an operator."""


# Any database problem: the driver's errors and the socket's (for "could not store; say so").
UNAVAILABLE: tuple[type[Exception], ...] = (SQLAlchemyError, DatabaseError, OSError)

# The database is away, busy or cut off, so the same write may succeed later: the only errors that
# justify "keep it and retry" (spooling). A refused connection is the driver's OSError raised as is;
# asyncpg's lost connection arrives as InterfaceError, a busy SQLite ("database is locked") and a
# PostgreSQL shutting down as OperationalError, asyncpg's command_timeout as TimeoutError, a full
# pool as sqlalchemy.exc.TimeoutError. A DataError or IntegrityError (e.g. PostgreSQL refusing
# U+0000 in text) would fail the same way forever: it is not in this tuple.
DISCONNECTED: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeout,
    DatabaseError,
    OSError,
    TimeoutError,
)


def disconnected(exc: BaseException) -> bool:
    """The write may succeed later: a DISCONNECTED error, or any driver error that SQLAlchemy
    recognised as a lost connection (e.g. PostgreSQL shutting down mid-query)."""
    return isinstance(exc, DISCONNECTED) or bool(getattr(exc, "connection_invalidated", False))


def parse_url(database_url: str) -> URL:
    try:
        return make_url(database_url)
    except ArgumentError:
        raise DatabaseError("DATABASE_URL: not a valid database URL") from None


SQLITE_BUSY_SECONDS = 30  # a writer waits this long for SQLite's one write lock: queued, not failed


def _enable_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Writers queue rather than fail under load.
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(
    database_url: str,
    *,
    echo: bool = False,
    pool_size: int = 10,
    command_timeout: float | None = COMMAND_TIMEOUT,
) -> AsyncEngine:
    """Build the engine without connecting; SQLite's parent folder is created if missing."""
    url = parse_url(database_url)
    kwargs: dict[str, Any] = {"echo": echo}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_SECONDS}
        if url.get_driver_name() == "aiosqlite":
            kwargs["module"] = one_trip_dbapi()  # one trip to aiosqlite's thread per statement
    else:
        # Bursts of turns wait for a connection rather than fail: each transaction is short.
        # At most 2x pool_size per process (plus the budget pool's 8 and the signal connection), so
        # 3 replicas at the default stay within PostgreSQL's default max_connections (100).
        # Opened as bursts need them and then kept: as overflow beyond pool_size, each burst's extra
        # connections were closed at checkin and opened again by the next (a new server process and
        # a cold statement cache each: 125 connects in one run of bench (d), 14 % of PostgreSQL's CPU).
        # LIFO: the connection used last goes out first, so a pool busier than a connection stays
        # warm (bot.storage.idle_ping pings only idle ones); FIFO rotated through all of them.
        kwargs.update(pool_size=2 * pool_size, max_overflow=0, pool_timeout=30, pool_use_lifo=True)
        # command_timeout: a database that stops answering (not refusing) fails a query instead of
        # hanging the turn, the probe and the maintenance loop until TCP gives up (minutes).
        kwargs["connect_args"] = {"timeout": 5, "command_timeout": command_timeout}
    try:
        engine = create_async_engine(url, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise DatabaseError(f"DATABASE_URL: {exc}") from None
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _enable_sqlite_pragmas)
    else:
        ping_idle_connections(engine)  # instead of pool_pre_ping: see bot.storage.idle_ping
    return engine


def dialect_name(session: AsyncSession) -> str:
    """The session's database ("postgresql" or "sqlite"); SQLite when it is not bound yet."""
    return session.bind.dialect.name if session.bind is not None else "sqlite"


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


# Two connections turning a new SQLite file to WAL at once: SQLite answers one of them "database is
# locked" at once (its deadlock guard skips the busy timeout). The file stays WAL after the first
# conversion, so the same connect a moment later succeeds.
_SQLITE_FIRST_CONNECT_TRIES = 5


async def check_database(engine: AsyncEngine) -> None:
    """Run SELECT 1; raise DatabaseError naming the host (never the password) when it fails."""
    for attempt in range(1, _SQLITE_FIRST_CONNECT_TRIES + 1):
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            if _sqlite_locked(engine, exc) and attempt < _SQLITE_FIRST_CONNECT_TRIES:
                await asyncio.sleep(0.05 * attempt)
                continue
            reason = error_reason(exc)
            raise DatabaseError(f"database unreachable at {describe(engine.url)}: {reason}") from exc


def _sqlite_locked(engine: AsyncEngine, exc: BaseException) -> bool:
    return engine.dialect.name == "sqlite" and "database is locked" in str(exc)


def describe(url: URL) -> str:
    """The URL without its password, for logs and error lines."""
    return url.render_as_string(hide_password=True)


def error_reason(exc: BaseException) -> str:
    """The driver's own one-line reason (e.g. 'database is locked'), without SQL or parameters."""
    orig = getattr(exc, "orig", None) or exc.__cause__ or exc
    return f"{type(orig).__name__}: {orig}".splitlines()[0][:200]
