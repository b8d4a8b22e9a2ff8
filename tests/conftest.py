"""Database fixtures shared by the suite: every database test runs on SQLite and on PostgreSQL.

- `db_url`: a database at the newest migration with empty tables, private to the test
  (SQLite: a fresh file in tmp_path; PostgreSQL: the session's database, truncated first).
- `engine`, `sessions`: an AsyncEngine on `db_url` and its session factory; disposed afterwards.
- `empty_db_url`: a database with no tables at all, for migration and start-up tests.

PostgreSQL is 127.0.0.1:5432 (override with BOT_TEST_POSTGRES_URL, any database the user can
CREATE DATABASE from). When it is unreachable the PostgreSQL cases fail, unless
BOT_TEST_SKIP_POSTGRES=1, which skips them. `-m "not postgres"` deselects them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from bot.storage.db import create_engine, session_factory
from bot.storage.migrate import upgrade_head
from bot.storage.models import Base

pytest_plugins = ["tests.fake_fixtures"]

T = TypeVar("T")

POSTGRES_ADMIN_URL = os.environ.get(
    "BOT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
SKIP_POSTGRES = os.environ.get("BOT_TEST_SKIP_POSTGRES") == "1"

DATABASES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code without touching pytest-asyncio's event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def postgres_url(database: str) -> str:
    return make_url(POSTGRES_ADMIN_URL).set(database=database).render_as_string(hide_password=False)


async def _postgres_admin(*statements: str) -> None:
    engine = create_async_engine(
        POSTGRES_ADMIN_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args={"timeout": 5}
    )
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


def _new_database_name() -> str:
    return f"test_bot_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def _postgres_server() -> str:
    """Checked once per session: a PostgreSQL we may create databases on, or a clear fail/skip."""
    try:
        run_in_thread(_postgres_admin("SELECT 1"))
    except Exception as exc:
        where = make_url(POSTGRES_ADMIN_URL).render_as_string(hide_password=True)
        problem = f"PostgreSQL at {where} is unreachable ({type(exc).__name__}: {exc})"
        if SKIP_POSTGRES:
            pytest.skip(f"{problem}; BOT_TEST_SKIP_POSTGRES=1")
        pytest.fail(
            f"{problem}. Start it, point BOT_TEST_POSTGRES_URL at one, "
            "or set BOT_TEST_SKIP_POSTGRES=1 to skip the PostgreSQL cases.",
            pytrace=False,
        )
    return POSTGRES_ADMIN_URL


@pytest.fixture(scope="session")
def _postgres_migrated_url(_postgres_server: str) -> Iterator[str]:
    """One PostgreSQL database per test session, migrated to head once and dropped at the end."""
    name = _new_database_name()
    run_in_thread(_postgres_admin(f'CREATE DATABASE "{name}"'))
    try:
        url = postgres_url(name)
        run_in_thread(upgrade_head(url))
        yield url
    finally:
        run_in_thread(_postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once; each test gets a copy, which is much faster than migrating."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    run_in_thread(upgrade_head(sqlite_url(path)))
    # Fold any WAL into the main file so that copying this one file copies the whole database.
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


async def _truncate_all(url: str) -> None:
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            # Fail, don't hang, when an earlier test left a transaction open on these tables.
            await conn.execute(text("SET LOCAL lock_timeout = '10s'"))
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    except DBAPIError as exc:
        pytest.fail(f"could not empty the PostgreSQL test tables (a leaked connection?): {exc.orig}")
    finally:
        await engine.dispose()


@pytest.fixture(params=DATABASES)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a database at head with empty tables that this test may use freely."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("_sqlite_template")
        path = tmp_path / "bot.db"
        shutil.copyfile(template, path)
        return sqlite_url(path)
    url: str = request.getfixturevalue("_postgres_migrated_url")
    await _truncate_all(url)
    return url


@pytest.fixture(params=DATABASES)
async def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """URL of a database with no tables at all (PostgreSQL: a fresh database, dropped afterwards)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "empty.db")
        return
    request.getfixturevalue("_postgres_server")
    name = _new_database_name()
    await _postgres_admin(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url(name)
    finally:
        await _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """The bot's own engine (SQLite pragmas, pool settings) on the test's database."""
    engine = create_engine(db_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """The bot's session factory on `engine`: `async with sessions() as session: ...`."""
    return session_factory(engine)


@pytest.fixture(autouse=True)
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's bot spools ledger writes into its own folder, never the working directory's data/
    (a later test would replay them into its own database)."""
    path = tmp_path / "spool"
    monkeypatch.setenv("USAGE_SPOOL_DIR", str(path))
    return path
