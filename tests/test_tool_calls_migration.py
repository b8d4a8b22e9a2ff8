"""Migration 0008_tool_calls on SQLite and PostgreSQL: up from the revision before keeps the
messages and adds the table and column; down removes only them."""

from __future__ import annotations

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from bot.storage.db import create_engine
from bot.storage.migrate import current_revision, run_alembic, script_location

REVISION = "0008_tool_calls"


def revision_before() -> str:
    """The revision this one follows (the chain is redrawn when branches merge)."""
    revision = ScriptDirectory(str(script_location())).get_revision(REVISION)
    assert revision is not None and isinstance(revision.down_revision, str)
    return revision.down_revision


async def schema(url: str) -> tuple[set[str], set[str]]:
    """(table names, columns of `messages`)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: (
                    set(inspect(sync).get_table_names()),
                    {c["name"] for c in inspect(sync).get_columns("messages")},
                )
            )
    finally:
        await engine.dispose()


async def test_upgrade_adds_tool_calls_and_the_exchange_and_downgrade_removes_only_them(
    empty_db_url: str,
) -> None:
    before = revision_before()
    await run_alembic(empty_db_url, lambda config: command.upgrade(config, before))
    engine = create_engine(empty_db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO conversations (team_id, channel_id, thread_ts, kind, created_at, "
                    "updated_at) VALUES ('T1', 'C1', '1.000001', 'channel', CURRENT_TIMESTAMP, "
                    "CURRENT_TIMESTAMP)"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO messages (conversation_id, role, content, status, created_at) "
                    "SELECT id, 'assistant', 'kept', 'complete', CURRENT_TIMESTAMP FROM conversations"
                )
            )
        await run_alembic(empty_db_url, lambda config: command.upgrade(config, REVISION))
        assert await current_revision(empty_db_url) == REVISION
        tables, columns = await schema(empty_db_url)
        assert "tool_calls" in tables and "tool_exchange" in columns
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO tool_calls (message_id, conversation_id, round, tool, arguments_sha256, "
                    "duration_ms, outcome, created_at) SELECT id, conversation_id, 1, 'current_time', "
                    "'ab', 3, 'ok', CURRENT_TIMESTAMP FROM messages"
                )
            )

        await run_alembic(empty_db_url, lambda config: command.downgrade(config, before))
        tables, columns = await schema(empty_db_url)
        assert "tool_calls" not in tables and "tool_exchange" not in columns
        async with engine.connect() as conn:
            kept = (await conn.execute(text("SELECT content FROM messages"))).scalar_one()
        assert kept == "kept"
    finally:
        await engine.dispose()
