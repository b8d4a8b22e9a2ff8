"""Apply Alembic migrations from code, from any working directory (`python -m bot migrate`, `run`)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.storage.db import DatabaseError, check_database, create_engine, describe, parse_url

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key: any constant that no other code in the database uses.
_PG_MIGRATION_LOCK = 7_262_019_447_311_002_513
# alembic.op and alembic.context are process-wide proxies: two commands interleaved on one event loop
# would send each other's DDL down the wrong connection (and deadlock on PostgreSQL).
_ALEMBIC_IN_USE = threading.Lock()


def script_location() -> Path:
    """The Alembic scripts: `bot.migrations` when installed, else `migrations/` beside `bot/`."""
    spec = importlib.util.find_spec("bot.migrations")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic Config built in code: no alembic.ini, no dependence on the current directory."""
    location = script_location()
    config = Config()
    config.set_main_option("script_location", str(location))
    config.set_main_option("version_locations", str(location / "versions"))
    config.set_main_option("path_separator", "os")
    # ConfigParser interpolates '%': URL-encoded passwords (p%40ss) must be escaped.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def head_revision() -> str | None:
    """The newest revision shipped with this code."""
    return ScriptDirectory(str(script_location())).get_current_head()


@dataclass(frozen=True)
class SchemaState:
    """Where the database's schema stands against this code's migrations."""

    database: str | None  # the database's revision; None: never migrated
    code: str | None  # this code's newest revision

    @property
    def newer(self) -> bool:
        """The database is at a revision this code does not ship: a later release migrated it."""
        return self.database is not None and not known_revision(self.database)

    @property
    def behind(self) -> bool:
        """The code needs migrations the database lacks (an empty database included)."""
        return self.database != self.code and not self.newer


def known_revision(revision: str) -> bool:
    """Whether this code ships `revision` (with one line of history, every known one is an ancestor)."""
    try:
        return ScriptDirectory(str(script_location())).get_revision(revision) is not None
    except CommandError:
        return False


async def upgrade_head(database_url: str) -> SchemaState:
    """Bring the database to the newest revision; raise DatabaseError with a one-line reason.

    A database a later release migrated (a revision this code does not know) is left as it is, never
    downgraded: its migrations are additive (README: expand, then contract), so this code still works.
    """
    found: list[str | None] = []

    def upgrade(config: Config) -> None:
        # Read under the migration lock: a replica that waited sees what the first one did.
        found.append(_current_revision(config.attributes["connection"]))
        if found[0] is None or known_revision(found[0]):
            command.upgrade(config, "head")

    await run_alembic(database_url, upgrade)
    state = SchemaState(found[0], head_revision())
    return state if state.newer else SchemaState(state.code, state.code)


async def schema_state(database_url: str) -> SchemaState:
    """The database's revision against this code's head, read without changing anything."""
    return SchemaState(await current_revision(database_url), head_revision())


async def prepare_schema(database_url: str, *, migrate: bool) -> SchemaState:
    """Start-up: migrate (MIGRATE_ON_START), or check that `python -m bot migrate` has run.

    Code newer than the database without migrating raises DatabaseError (one line naming both
    revisions); a database newer than the code is logged once and used as it is.
    """
    state = await upgrade_head(database_url) if migrate else await schema_state(database_url)
    if state.behind:
        where = f"at revision {state.database}" if state.database else "empty (never migrated)"
        raise DatabaseError(
            f"database is {where} but this code needs {state.code}: "
            'run "python -m bot migrate" first (MIGRATE_ON_START=false)'
        )
    if state.newer:
        log.warning(
            "database is at revision %s, newer than this code's %s (a later release migrated it): "
            "running on it unchanged",
            state.database,
            state.code,
        )
    return state


async def current_revision(database_url: str) -> str | None:
    """The revision the database is at, or None when it has never been migrated."""
    engine = create_engine(database_url)
    try:
        await check_database(engine)
        async with engine.connect() as conn:
            return await conn.run_sync(_current_revision)
    except SQLAlchemyError as exc:
        raise _failure("reading the revision of", database_url, exc) from exc
    finally:
        await engine.dispose()


async def run_alembic(database_url: str, run: Callable[[Config], object]) -> None:
    """Run an Alembic command in one migration transaction (env.py is handed the connection)."""
    # No query timeout: the advisory lock waits for another replica's migration, DDL can be long.
    engine = create_engine(database_url, command_timeout=None)
    try:
        await check_database(engine)
        async with _alembic_turn(), migration_transaction(engine) as conn:
            await conn.run_sync(_run_with_connection, database_url, run)
    except (SQLAlchemyError, CommandError) as exc:
        raise _failure("migrating", database_url, exc) from exc
    finally:
        await engine.dispose()


@asynccontextmanager
async def migration_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One transaction for a whole migration run, committed only if every step succeeds.

    PostgreSQL: an advisory lock held to the end serializes replicas that start together; whoever
    waited then finds the database at head. SQLite: the write lock is taken up front, and foreign keys
    are off while tables are rebuilt (batch mode drops and recreates a table; with foreign keys on, that
    DROP would cascade-delete every row referencing it) and checked before committing.
    """
    async with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # Before any BEGIN: inside a transaction SQLite ignores this pragma.
            await _sqlite_driver_execute(conn, "PRAGMA foreign_keys=OFF")
        try:
            async with conn.begin():
                if conn.dialect.name == "postgresql":
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                    )
                elif sqlite and not await _sqlite_in_transaction(conn):
                    # The driver would otherwise run each DDL statement in autocommit.
                    await conn.exec_driver_sql("BEGIN IMMEDIATE")
                yield conn
                if sqlite:
                    broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).first()
                    if broken is not None:
                        raise CommandError(
                            f"migration left rows with a dangling foreign key: {tuple(broken)}"
                        )
        finally:
            if sqlite:
                await _sqlite_driver_execute(conn, "PRAGMA foreign_keys=ON")


async def _sqlite_driver_execute(conn: AsyncConnection, statement: str) -> None:
    # Straight to aiosqlite, so no SQLAlchemy "begin" (or a hook on it) runs first.
    raw = await conn.get_raw_connection()
    cursor = await raw.driver_connection.execute(statement)  # type: ignore[union-attr]
    await cursor.close()


async def _sqlite_in_transaction(conn: AsyncConnection) -> bool:
    raw = await conn.get_raw_connection()
    return bool(getattr(raw.driver_connection, "in_transaction", False))


@asynccontextmanager
async def _alembic_turn() -> AsyncIterator[None]:
    # Polling, not asyncio.Lock/Event: those bind to one event loop, and this must be safe to cancel.
    while not _ALEMBIC_IN_USE.acquire(blocking=False):  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        _ALEMBIC_IN_USE.release()


def _run_with_connection(connection: Connection, database_url: str, run: Callable[[Config], object]) -> None:
    config = alembic_config(database_url)
    config.attributes["connection"] = connection
    run(config)


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _failure(doing: str, database_url: str, exc: Exception) -> DatabaseError:
    orig = getattr(exc, "orig", None) or exc
    reason = f"{type(orig).__name__}: {orig}".splitlines()[0][:300]
    return DatabaseError(f"{doing} the database at {describe(parse_url(database_url))} failed: {reason}")
