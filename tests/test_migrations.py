"""Migrations on SQLite and PostgreSQL: empty -> head -> base -> head, no drift, constraints, errors."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, MetaData, String, delete, inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.storage.db import DatabaseError, check_database, create_engine, session_factory
from bot.storage.migrate import (
    alembic_config,
    current_revision,
    head_revision,
    migration_transaction,
    run_alembic,
    script_location,
    upgrade_head,
)
from bot.storage.models import (
    NAMING_CONVENTION,
    Base,
    Conversation,
    ConversationKind,
    DigestRun,
    Message,
    MessageStatus,
    ProcessedEvent,
    Role,
    UsageRecord,
)

MODEL_TABLES = set(Base.metadata.tables)
REPO_ROOT = Path(__file__).resolve().parents[1]


async def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


def schema_diff(connection: Connection, metadata: MetaData) -> list[Any]:
    """What `alembic check` would report, with the options env.py uses."""
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "target_metadata": metadata, "render_as_batch": True}
    )
    return list(compare_metadata(context, metadata))


def diff_kinds(diffs: list[Any]) -> set[str]:
    # Column modifications come as a list of tuples, everything else as one tuple.
    return {(diff[0][0] if isinstance(diff, list) else diff[0]) for diff in diffs}


async def test_upgrade_head_creates_every_table_on_an_empty_database(empty_db_url: str) -> None:
    assert await current_revision(empty_db_url) is None

    await upgrade_head(empty_db_url)

    assert await table_names(empty_db_url) == MODEL_TABLES | {"alembic_version"}
    assert await current_revision(empty_db_url) == head_revision()


async def test_upgrade_head_again_changes_nothing(db_url: str) -> None:
    await upgrade_head(db_url)

    assert await current_revision(db_url) == head_revision()


async def test_replicas_starting_together_all_migrate_successfully(empty_db_url: str, tmp_path: Path) -> None:
    # Separate processes, like replicas: only the database's own lock keeps them apart.
    script = (
        "import asyncio, sys\n"
        "from bot.storage.migrate import upgrade_head\n"
        "asyncio.run(upgrade_head(sys.argv[1]))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    replicas = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, empty_db_url, cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(2)
    ]
    try:
        async with asyncio.timeout(60):
            outputs = await asyncio.gather(*(replica.communicate() for replica in replicas))
    finally:
        for replica in replicas:
            if replica.returncode is None:
                replica.kill()

    errors = [stderr.decode() for _, stderr in outputs]
    assert [replica.returncode for replica in replicas] == [0, 0], errors
    assert await table_names(empty_db_url) == MODEL_TABLES | {"alembic_version"}


async def test_concurrent_migrations_in_one_process_do_not_cross_wires(
    empty_db_url: str, tmp_path: Path
) -> None:
    # Alembic's op/context are process globals: unserialized, one database gets another's DDL.
    urls = [
        empty_db_url,
        empty_db_url,
        *(f"sqlite+aiosqlite:///{tmp_path / name}" for name in ("a.db", "b.db")),
    ]
    async with asyncio.timeout(30):
        await asyncio.gather(*(upgrade_head(url) for url in urls))

    for url in urls:
        assert await current_revision(url) == head_revision()
        assert await table_names(url) == MODEL_TABLES | {"alembic_version"}


async def test_first_connections_to_a_new_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    # Turning a new file to WAL from two connections at once makes SQLite refuse one of them at once
    # ("database is locked", its deadlock guard skips the busy timeout): check_database tries again.
    for attempt in range(15):
        url = f"sqlite+aiosqlite:///{tmp_path / f'fresh{attempt}.db'}"
        engines = [create_engine(url) for _ in range(6)]
        try:
            await asyncio.gather(*(check_database(engine) for engine in engines))
        finally:
            for engine in engines:
                await engine.dispose()


async def test_alembic_check_finds_no_drift_between_models_and_migrations(
    db_url: str, engine: AsyncEngine
) -> None:
    # The real `alembic check`, through env.py; it raises if autogenerate would emit anything.
    await run_alembic(db_url, command.check)
    async with engine.connect() as conn:
        assert await conn.run_sync(schema_diff, Base.metadata) == []


async def test_drift_check_reports_a_model_that_changed(engine: AsyncEngine) -> None:
    changed = MetaData(naming_convention=NAMING_CONVENTION)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["messages"].append_column(Column("reaction", String(32)))
    changed.tables["usage_records"].c["status"].type = String(64)

    async with engine.connect() as conn:
        diffs = await conn.run_sync(schema_diff, changed)

    assert diff_kinds(diffs) == {"add_column", "modify_type"}


async def test_downgrade_to_base_then_upgrade_again(empty_db_url: str) -> None:
    await upgrade_head(empty_db_url)

    await run_alembic(empty_db_url, lambda config: command.downgrade(config, "base"))
    assert await table_names(empty_db_url) == {"alembic_version"}
    assert await current_revision(empty_db_url) is None

    await upgrade_head(empty_db_url)
    assert await table_names(empty_db_url) == MODEL_TABLES | {"alembic_version"}


async def test_upgrade_head_works_from_any_working_directory(
    empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    await upgrade_head(empty_db_url)

    assert await table_names(empty_db_url) == MODEL_TABLES | {"alembic_version"}


async def test_default_sqlite_url_creates_data_folder_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    await upgrade_head("sqlite+aiosqlite:///data/bot.db")

    assert (tmp_path / "data" / "bot.db").is_file()
    assert await table_names(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'bot.db'}") >= MODEL_TABLES


def test_alembic_config_finds_the_scripts_without_alembic_ini(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "postgresql+asyncpg://bot:p%40ss%25word@db.internal/bot"

    config = alembic_config(url)

    assert (Path(config.get_main_option("script_location") or "") / "env.py").is_file()
    assert config.get_main_option("sqlalchemy.url") == url
    assert head_revision() == "0013_usage_team_index"  # the newest revision (re-chained at merge)


async def test_drafted_migrations_use_plain_sqlalchemy_types_not_app_imports(tmp_path: Path) -> None:
    # `alembic revision --autogenerate` on an empty history drafts every table through env.py.
    scripts = tmp_path / "migrations"
    shutil.copytree(script_location(), scripts, ignore=shutil.ignore_patterns("0*.py", "__pycache__"))

    def draft(config: Config) -> None:
        config.set_main_option("script_location", str(scripts))
        config.set_main_option("version_locations", str(scripts / "versions"))
        command.revision(config, message="draft", autogenerate=True, rev_id="draft")

    await run_alembic(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", draft)

    drafted = (scripts / "versions" / "draft_draft.py").read_text()
    assert "sa.DateTime(timezone=True)" in drafted
    assert "bot." not in drafted
    for name in MODEL_TABLES:
        assert f"op.create_table({name!r}" in drafted


def _conversation(thread_ts: str = "1700000000.000100") -> Conversation:
    return Conversation(team_id="T1", channel_id="C1", thread_ts=thread_ts, kind=ConversationKind.CHANNEL)


def _event(event_id: str, channel_id: str, message_ts: str) -> ProcessedEvent:
    return ProcessedEvent(event_id=event_id, channel_id=channel_id, message_ts=message_ts)


def _digest(day: date, channel_id: str) -> DigestRun:
    return DigestRun(day=day, channel_id=channel_id)


# (first row, a row that breaks a unique key, a row that differs in just one part of that key)
UNIQUE_CASES: dict[str, Callable[[], tuple[Any, Any, Any]]] = {
    "event-id-retried": lambda: (
        _event("Ev1", "C1", "1.000100"),
        _event("Ev1", "C2", "2.000200"),
        _event("Ev2", "C2", "2.000200"),
    ),
    "mention-and-message-twins": lambda: (
        _event("Ev1", "C1", "1.000100"),
        _event("Ev2", "C1", "1.000100"),
        _event("Ev3", "C2", "1.000100"),
    ),
    "conversation-key": lambda: (_conversation(), _conversation(), _conversation("1700000000.000200")),
    "digest-day-and-channel": lambda: (
        _digest(date(2025, 1, 1), "C1"),
        _digest(date(2025, 1, 1), "C1"),
        _digest(date(2025, 1, 2), "C1"),
    ),
}


@pytest.mark.parametrize("make_rows", UNIQUE_CASES.values(), ids=UNIQUE_CASES.keys())
async def test_database_refuses_a_duplicate_key(
    sessions: async_sessionmaker[AsyncSession], make_rows: Callable[[], tuple[Any, Any, Any]]
) -> None:
    first, duplicate, distinct = make_rows()
    async with sessions() as session:
        session.add(first)
        await session.commit()

        session.add(duplicate)
        with pytest.raises(IntegrityError):
            await session.commit()
        await session.rollback()

        session.add(distinct)
        await session.commit()


async def test_deleting_a_conversation_removes_its_messages_but_keeps_the_usage_ledger(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        conversation = _conversation()
        session.add(conversation)
        await session.flush()
        session.add_all(
            [
                Message(
                    conversation_id=conversation.id,
                    role=Role.USER,
                    content="hello",
                    status=MessageStatus.COMPLETE,
                ),
                UsageRecord(conversation_id=conversation.id, model_requested="zhipu/glm-5", status="ok"),
            ]
        )
        await session.commit()

        await session.execute(delete(Conversation).where(Conversation.id == conversation.id))
        await session.commit()

        assert (await session.execute(select(Message))).scalars().all() == []
        ledger = (await session.execute(select(UsageRecord))).scalar_one()
        assert ledger.conversation_id is None


async def test_message_for_a_missing_conversation_is_refused(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        session.add(Message(conversation_id=4242, role=Role.USER, content="x", status=MessageStatus.COMPLETE))
        with pytest.raises(IntegrityError):
            await session.commit()


async def test_timestamps_come_back_as_aware_utc_and_compare_by_instant(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    berlin_noon = datetime(2025, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=1)))
    async with sessions() as session:
        session.add(UsageRecord(model_requested="zhipu/glm-5", status="ok", created_at=berlin_noon))
        await session.commit()

    async with sessions() as session:
        stored = (await session.execute(select(UsageRecord.created_at))).scalar_one()
        after_11_30_utc = await session.execute(
            select(UsageRecord.id).where(UsageRecord.created_at >= datetime(2025, 1, 1, 11, 30, tzinfo=UTC))
        )

    assert stored == datetime(2025, 1, 1, 11, 0, tzinfo=UTC)
    assert stored.utcoffset() == timedelta(0)
    assert after_11_30_utc.all() == []


async def test_sqlite_engine_uses_wal_and_enforces_foreign_keys(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    try:
        async with engine.connect() as conn:
            journal_mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one()
            foreign_keys = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one()
    finally:
        await engine.dispose()

    assert journal_mode == "wal"
    assert foreign_keys == 1


def _rebuild_conversations_table(connection: Connection) -> None:
    # What a future SQLite migration of `conversations` does in batch mode: copy, drop, rename.
    operations = Operations(MigrationContext.configure(connection))
    with operations.batch_alter_table("conversations", recreate="always") as batch:
        batch.add_column(Column("topic", String(64)))


async def test_sqlite_table_rebuild_in_a_migration_keeps_the_rows_that_reference_it(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    await upgrade_head(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    try:
        async with sessions() as session:
            conversation = _conversation()
            session.add(conversation)
            await session.flush()
            session.add(
                Message(
                    conversation_id=conversation.id,
                    role=Role.USER,
                    content="hi",
                    status=MessageStatus.COMPLETE,
                )
            )
            await session.commit()

        async with migration_transaction(engine) as conn:
            await conn.run_sync(_rebuild_conversations_table)

        async with sessions() as session:
            assert [m.content for m in (await session.execute(select(Message))).scalars()] == ["hi"]
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one() == 1
    finally:
        await engine.dispose()


async def test_unreachable_database_is_reported_with_its_host_and_without_the_password() -> None:
    url = "postgresql+asyncpg://nobody:hunter2-secret@127.0.0.1:1/x"

    with pytest.raises(DatabaseError) as upgrade_error:
        await upgrade_head(url)
    with pytest.raises(DatabaseError) as revision_error:
        await current_revision(url)

    for error in (upgrade_error, revision_error):
        message = str(error.value)
        assert "127.0.0.1:1" in message
        assert "hunter2-secret" not in message
        assert "\n" not in message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a database url", "not a valid database URL"),
        ("postgresql+nosuchdriver://bot:hunter2-secret@db.internal/bot", "nosuchdriver"),
    ],
    ids=["garbage", "unknown-driver"],
)
async def test_bad_database_url_is_reported_in_one_line(url: str, expected: str) -> None:
    with pytest.raises(DatabaseError) as error:
        await upgrade_head(url)

    assert expected in str(error.value)
    assert "hunter2-secret" not in str(error.value)


async def test_database_migrated_by_newer_code_is_reported_not_touched(empty_db_url: str) -> None:
    await upgrade_head(empty_db_url)
    engine = create_engine(empty_db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    finally:
        await engine.dispose()

    state = await upgrade_head(empty_db_url)

    # Never downgraded nor failed on (README: Rolling upgrades); the caller reports it.
    assert (state.database, state.newer, state.behind) == ("9999_from_the_future", True, False)
    assert await current_revision(empty_db_url) == "9999_from_the_future"
    assert await table_names(empty_db_url) == MODEL_TABLES | {"alembic_version"}


async def test_migrated_tables_start_empty_for_every_test(sessions: async_sessionmaker[AsyncSession]) -> None:
    # Runs after tests that inserted rows: the fixtures hand each test empty tables and fresh ids.
    async with sessions() as session:
        for table in Base.metadata.sorted_tables:
            assert (await session.execute(select(table))).first() is None
        session.add(_conversation())
        await session.commit()
        assert (await session.execute(select(Conversation.id))).scalar_one() == 1


async def test_upgrading_from_0001_keeps_the_ledger_and_gives_each_request_id_one_row(
    empty_db_url: str,
) -> None:
    await run_alembic(empty_db_url, lambda config: command.upgrade(config, "0001"))
    engine = create_engine(empty_db_url)
    try:
        async with engine.begin() as conn:
            for request_id in ("req-a", "req-a", "req-b", None, None):
                await conn.execute(
                    text(
                        "INSERT INTO usage_records (model_requested, status, client_request_id, created_at) "
                        "VALUES ('m', 'complete', :rid, CURRENT_TIMESTAMP)"
                    ),
                    {"rid": request_id},
                )
        await upgrade_head(empty_db_url)
        async with engine.connect() as conn:
            ids = (await conn.execute(text("SELECT client_request_id FROM usage_records ORDER BY id"))).all()
            assert [row[0] for row in ids] == ["req-a", None, "req-b", None, None]
            with pytest.raises(IntegrityError):
                await conn.execute(
                    text(
                        "INSERT INTO usage_records (model_requested, status, client_request_id, created_at) "
                        "VALUES ('m', 'complete', 'req-b', CURRENT_TIMESTAMP)"
                    )
                )
            await conn.rollback()
            columns = await conn.run_sync(
                lambda sync: {c["name"] for c in inspect(sync).get_columns("messages")}
            )
            assert {"lease_expires_at", "slack_parts", "request_id"} <= columns

        await run_alembic(empty_db_url, lambda config: command.downgrade(config, "0001"))
        async with engine.connect() as conn:
            columns = await conn.run_sync(
                lambda sync: {c["name"] for c in inspect(sync).get_columns("messages")}
            )
            count = (await conn.execute(text("SELECT COUNT(*) FROM usage_records"))).scalar_one()
        assert "lease_expires_at" not in columns and count == 5
    finally:
        await engine.dispose()
