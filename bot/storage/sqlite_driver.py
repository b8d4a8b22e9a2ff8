"""SQLite through aiosqlite with one trip to the connection's thread per statement.

SQLAlchemy's aiosqlite adapter makes four trips per statement (open a cursor, execute, fetch, close),
each a hand-off to aiosqlite's thread and back through the event loop. While the loop is busy (a
burst of events), every trip waits behind the ready tasks, and a write transaction holds SQLite's
one write lock across all of its trips: bench (d) (500 mentions in 10 s) waited 2.3 s p50 for its
admission claim, two statements and a commit. Here a statement runs, and its rows are fetched, in
one function on aiosqlite's thread (aiosqlite's own `Connection._execute`, the queue its methods
use), so a claim holds the lock for three trips instead of nine. A commit or rollback with no
transaction open (a read-only transaction's end, the pool's reset after a commit) makes no trip.

Written by hand (SQLAlchemy has no such option) and measured on bench (d), SQLite: CPU per reply
0.065-0.073 -> 0.044-0.047 s; with a stage probe in place, the claim's p50 2.3 -> 1.0-1.5 s.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

_Meta = tuple[Any, int, int | None]  # a cursor's description, rowcount and lastrowid
_NO_META: _Meta = (None, -1, None)


def _execute(conn: sqlite3.Connection, operation: str, parameters: Any) -> tuple[list[Any] | None, _Meta]:
    cursor = conn.cursor()
    try:
        cursor.execute(operation, () if parameters is None else parameters)
        rows = cursor.fetchall() if cursor.description else None
        return rows, (cursor.description, cursor.rowcount, cursor.lastrowid)
    finally:
        cursor.close()


def _executemany(conn: sqlite3.Connection, operation: str, parameters: Sequence[Any]) -> tuple[None, _Meta]:
    cursor = conn.cursor()
    try:
        cursor.executemany(operation, parameters)
        return None, (cursor.description, cursor.rowcount, cursor.lastrowid)
    finally:
        cursor.close()


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A client-side cursor: rows are fetched with the statement, and nothing stays open between."""

    __slots__ = ("_arraysize", "_meta")

    def __init__(
        self, adapt_connection: AsyncAdapt_aiosqlite_connection
    ) -> None:  # not super(): that opens an aiosqlite cursor
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._meta = _NO_META
        self._arraysize = 1  # DBAPI's default: what fetchmany() without a size returns

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    def nextset(self) -> None:
        return None  # SQLite returns one result set

    @property
    def description(self) -> Any:
        return self._meta[0]

    @property
    def rowcount(self) -> int:
        return self._meta[1]

    @property
    def lastrowid(self) -> Any:
        return self._meta[2]

    async def _async_soft_close(self) -> None:
        return  # nothing is open on the thread's side

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            return await_(self._run(_execute, operation, parameters))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        try:
            return await_(self._run(_executemany, operation, seq_of_parameters))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _run(self, function: Any, operation: Any, parameters: Any) -> None:
        async with self._adapt_connection._execute_mutex:
            connection: Any = self._connection  # an aiosqlite.Connection (typed as any async DBAPI's)
            rows, self._meta = await connection._execute(function, connection._conn, operation, parameters)
            self._rows = collections.deque(rows or ())


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls: type[AsyncAdapt_aiosqlite_cursor] = OneTripCursor

    def _idle(self) -> bool:
        """No transaction is open: sqlite3's commit and rollback would do nothing. Read from sqlite3's
        autocommit flag while no statement runs on this connection: its user awaits each one, and a
        statement cancelled mid-way makes SQLAlchemy invalidate the connection, whose close is queued
        behind the statement."""
        conn: sqlite3.Connection | None = getattr(self._connection, "_connection", None)
        return conn is not None and not conn.in_transaction

    def commit(self) -> None:
        if not self._idle():  # a transaction that only read: no trip (sqlite3 began none)
            super().commit()

    def rollback(self) -> None:
        if not self._idle():  # the pool's reset after a commit: no trip
            super().rollback()


class OneTripDbapi(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module for `create_async_engine(..., module=...)`: aiosqlite with OneTripCursor."""

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        adapted = super().connect(*arg, **kw)
        return OneTripConnection(self, adapted._connection)


def one_trip_dbapi() -> OneTripDbapi:
    return OneTripDbapi(aiosqlite, sqlite3)
