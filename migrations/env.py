"""Alembic environment: runs the migrations on the async engine, or on a connection handed in.

Callers that already hold a connection (bot.storage.migrate, tests) put a sync `Connection` in
`config.attributes["connection"]`; the `alembic` command line gets its URL from DATABASE_URL.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from alembic.util import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.types import TypeDecorator

from bot.settings import SettingsError, load_settings
from bot.storage.db import DatabaseError, check_database, create_engine
from bot.storage.migrate import migration_transaction
from bot.storage.models import Base

config = context.config
if config.config_file_name is not None:  # the alembic command line; the bot configures its own logging
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    try:
        return load_settings().database_url
    except SettingsError as exc:
        raise CommandError(str(exc)) from None


def render_item(kind: str, obj: Any, _autogen_context: AutogenContext) -> str | Literal[False]:
    # Migrations must not import the app: a column type like UTCDateTime is written as the plain
    # SQLAlchemy type it stores (sa.DateTime(timezone=True)), which is all the database sees.
    if kind == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl_instance!r}"
    return False


def configure(**target: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode recreates the table there, plain ALTER elsewhere.
        render_as_batch=True,
        compare_type=True,
        render_item=render_item,
        **target,
    )


def run_migrations_offline() -> None:
    configure(url=database_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    try:
        engine = create_engine(database_url(), command_timeout=None)  # locks and DDL may be long
    except DatabaseError as exc:
        raise CommandError(str(exc)) from None
    try:
        await check_database(engine)
        async with migration_transaction(engine) as connection:
            await connection.run_sync(do_run_migrations)
    except DatabaseError as exc:  # unreachable: one line instead of a driver traceback
        raise CommandError(str(exc)) from None
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(run_async_migrations())
    else:
        raise CommandError(
            "alembic commands cannot open their own engine inside a running event loop: "
            "use bot.storage.migrate (it hands env.py a connection)"
        )


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
