"""SQLite's one-trip cursor (bot.storage.sqlite_driver): every statement makes one trip to aiosqlite's
thread, and SQLAlchemy sees the results, counts and errors it saw through the stock adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import Integer, String, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bot.storage.db import create_engine
from bot.storage.sqlite_driver import OneTripCursor


class _Base(DeclarativeBase):
    pass


class _Row(_Base):
    __tablename__ = "rows"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(20), unique=True)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'one_trip.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(_Base.metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every function sent to aiosqlite's thread from now on."""
    sent: list[str] = []
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return sent


async def test_the_engine_uses_the_one_trip_cursor(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert isinstance(raw.driver_connection, aiosqlite.Connection)
        assert isinstance(raw.dbapi_connection.cursor(), OneTripCursor)  # type: ignore[union-attr]


async def test_a_statement_is_one_trip_and_a_transaction_adds_only_its_commit(
    engine: AsyncEngine, trips: list[str]
) -> None:
    async with engine.begin() as conn:
        trips.clear()  # the connection's checkout is not counted
        await conn.execute(insert(_Row).values(name="a"))
        found = (await conn.execute(select(_Row.name))).scalars().all()
        assert trips == ["_execute", "_execute"]  # cursor, execute, fetch and close: one trip each
    assert found == ["a"]
    assert trips == ["_execute", "_execute", "commit"]  # the pool's reset after it: no trip

    trips.clear()
    async with engine.begin() as conn:  # only reads: sqlite3 began no transaction, none to end
        await conn.execute(select(_Row.name))
    assert trips == ["_execute"]

    trips.clear()
    with pytest.raises(RuntimeError):
        await _insert_then_fail(engine, "b", RuntimeError())
    assert trips == ["_execute", "rollback"]
    async with engine.connect() as conn:
        assert (await conn.execute(select(_Row.name))).scalars().all() == ["a"]


async def test_results_counts_and_ids_are_what_sqlalchemy_expects(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        inserted = await conn.execute(insert(_Row).values(name="a"))
        assert inserted.inserted_primary_key == (1,)  # lastrowid
        many = await conn.execute(insert(_Row), [{"name": "b"}, {"name": "c"}])  # executemany
        assert many.rowcount == 2
        returned = await conn.execute(insert(_Row).values(name="d").returning(_Row.id, _Row.name))
        assert returned.one() == (4, "d")
        changed = await conn.execute(update(_Row).where(_Row.name != "a").values(name=_Row.name + "x"))
        assert changed.rowcount == 3
        rows = (await conn.execute(select(_Row.id, _Row.name).order_by(_Row.id))).all()
        assert rows == [(1, "a"), (2, "bx"), (3, "cx"), (4, "dx")]
        assert (await conn.execute(text("SELECT count(*) FROM rows WHERE id > :n"), {"n": 1})).scalar() == 3
        streamed = await conn.stream(select(_Row.id).order_by(_Row.id))  # a server-side cursor still works
        assert [row async for row in streamed.scalars()] == [1, 2, 3, 4]


async def test_errors_arrive_as_sqlalchemy_errors_and_the_transaction_rolls_back(engine: AsyncEngine) -> None:
    with pytest.raises(IntegrityError):
        await _insert_then_fail(engine, "same", None)
    async with engine.connect() as conn:
        assert (await conn.execute(select(_Row))).all() == []
        with pytest.raises(Exception, match="no such table"):
            await conn.execute(text("SELECT * FROM missing"))
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1  # the connection is still usable


async def _insert_then_fail(engine: AsyncEngine, name: str, error: Exception | None) -> None:
    """Insert `name` in a transaction that then fails: with `error`, or by inserting `name` again."""
    async with engine.begin() as conn:
        await conn.execute(insert(_Row).values(name=name))
        if error is not None:
            raise error
        await conn.execute(insert(_Row).values(name=name))
