"""The PostgreSQL pool pings a connection only after it sat idle (bot.storage.idle_ping): one used a
moment ago goes straight to its statement, one whose server connection was lost while idle is
replaced before the statement, as with pool_pre_ping; one lost within the second fails a statement
once, then the pool reconnects; a pool used now and then keeps reusing its warm connection (LIFO);
the connections a burst opened stay open for the next one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.storage import idle_ping
from bot.storage.db import create_engine

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)]

IDLE = 0.2  # PING_AFTER_IDLE in these tests


@pytest.fixture
async def pinged(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[AsyncEngine, list[Any]]]:
    """The bot's engine, and the connections its pool pinged."""
    monkeypatch.setattr(idle_ping, "PING_AFTER_IDLE", IDLE)
    engine = create_engine(db_url, pool_size=2)
    dialect = type(engine.sync_engine.dialect)
    pings: list[Any] = []
    ping = dialect.do_ping

    def counted(self: Any, dbapi_connection: Any) -> bool:
        pings.append(dbapi_connection)
        return ping(self, dbapi_connection)

    monkeypatch.setattr(dialect, "do_ping", counted)
    try:
        yield engine, pings
    finally:
        await engine.dispose()


async def _terminate(db_url: str, backend: int) -> None:
    """What a server restart or a proxy's idle timeout does to one connection."""
    killer = create_engine(db_url)
    try:
        async with killer.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
    finally:
        await killer.dispose()


async def _backend(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_a_connection_used_a_moment_ago_is_not_pinged(pinged: tuple[AsyncEngine, list[Any]]) -> None:
    engine, pings = pinged
    backends = {await _backend(engine) for _ in range(20)}
    assert len(backends) == 1  # the same pooled connection every time
    assert pings == []


async def test_an_idle_connection_is_pinged_once_before_its_next_use(
    pinged: tuple[AsyncEngine, list[Any]],
) -> None:
    engine, pings = pinged
    first = await _backend(engine)
    await asyncio.sleep(IDLE + 0.1)
    assert await _backend(engine) == first
    assert await _backend(engine) == first
    assert len(pings) == 1


async def test_a_connection_lost_while_idle_is_replaced_before_the_statement(
    pinged: tuple[AsyncEngine, list[Any]], db_url: str
) -> None:
    engine, pings = pinged
    lost = await _backend(engine)
    await _terminate(db_url, lost)
    await asyncio.sleep(IDLE + 0.1)
    replaced = await _backend(engine)  # no error: the ping found the loss and the pool reconnected
    assert replaced != lost
    assert len(pings) == 1


async def test_a_pool_used_now_and_then_reuses_its_warm_connection_not_a_cold_one(
    pinged: tuple[AsyncEngine, list[Any]],
) -> None:
    engine, pings = pinged
    async with engine.connect() as one, engine.connect() as two:  # two connections in the pool
        await one.execute(text("SELECT 1"))
        await two.execute(text("SELECT 1"))
    backends = set()
    for _ in range(5):
        await asyncio.sleep(IDLE * 0.6)  # a use now and then: each connection idle longer if rotated
        backends.add(await _backend(engine))
    assert len(backends) == 1
    assert pings == []


async def test_a_connection_lost_within_the_second_fails_one_statement_then_the_pool_reconnects(
    pinged: tuple[AsyncEngine, list[Any]], db_url: str
) -> None:
    engine, pings = pinged
    lost = await _backend(engine)
    await _terminate(db_url, lost)
    with pytest.raises(DBAPIError) as failed:  # used a moment ago: not pinged, so the statement fails
        await _backend(engine)
    assert failed.value.connection_invalidated
    assert await _backend(engine) != lost  # the pool replaced it
    assert pings == []


async def test_a_burst_keeps_the_connections_it_opened(db_url: str) -> None:
    """Up to twice the pool size at once, and those opened stay for the next burst: closed at checkin
    (overflow), each burst opened them again, a new server process each."""
    engine = create_engine(db_url, pool_size=2)
    connects = 0

    def connected(*_: Any) -> None:
        nonlocal connects
        connects += 1

    event.listen(engine.sync_engine, "connect", connected)
    try:
        for _ in range(2):
            held = [await engine.connect() for _ in range(4)]
            await asyncio.gather(*(conn.close() for conn in held))
        assert connects == 4
        held = [await engine.connect() for _ in range(4)]
        try:
            with pytest.raises(TimeoutError):  # a fifth waits: 2 x the pool size at most
                await asyncio.wait_for(engine.connect(), 0.5)
        finally:
            await asyncio.gather(*(conn.close() for conn in held))
    finally:
        await engine.dispose()
