"""Rolling upgrades through the real command line: `migrate` as its own step, MIGRATE_ON_START=false.

A replica whose code is newer than the database refuses to start with one line; one whose code is
older (a later release already migrated) keeps answering, with or without migration on start.
"""

from __future__ import annotations

import asyncio
import json
import signal

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import text

from bot.storage.db import create_engine
from bot.storage.migrate import current_revision, head_revision, run_alembic, script_location, upgrade_head
from tests.fakes.aimlapi import Reply
from tests.harness import SIGNING_SECRET, eventually
from tests.test_cli import bot_env, run_bot, table_names
from tests.test_process import ANSWER_WORD, API_KEY, BOT_TOKEN, send_mention, spawn_bot, start_bot

HEAD = head_revision()
LATER_RELEASE = "0099_later_release"


def previous_revision() -> str:
    """The revision just before this code's head: a database one release behind."""
    assert HEAD is not None
    down = ScriptDirectory(str(script_location())).get_revision(HEAD).down_revision
    assert isinstance(down, str)
    return down


async def migrate_to(database_url: str, revision: str) -> None:
    await run_alembic(database_url, lambda config: command.upgrade(config, revision))


async def migrated_by_a_later_release(database_url: str) -> None:
    """What the next release's expand step does: a new nullable column and a new table, then its id."""
    await upgrade_head(database_url)
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE messages ADD COLUMN later_note VARCHAR(40)"))
            await conn.execute(text("CREATE TABLE later_things (id INTEGER PRIMARY KEY)"))
            await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": LATER_RELEASE})
    finally:
        await engine.dispose()


def replica_env(tmp_path, slack, aiml, database_url: str, **extra: str) -> dict[str, str]:
    return bot_env(
        tmp_path,
        DATABASE_URL=database_url,
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=slack.api_url,
        AIMLAPI_KEY=API_KEY,
        AIMLAPI_BASE_URL=aiml.base_url,
        HOST="127.0.0.1",
        PORT="0",
        **extra,
    )


async def refusal(tmp_path, fakes, database_url: str) -> tuple[int | None, list[str]]:
    slack, aiml = fakes
    process = await spawn_bot(
        tmp_path, replica_env(tmp_path, slack, aiml, database_url, MIGRATE_ON_START="false")
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, err.decode().strip().splitlines()


async def test_a_replica_newer_than_the_database_refuses_to_start_with_one_line_until_migrate_runs(
    tmp_path, fakes, empty_db_url, monkeypatch
):
    before = previous_revision()
    await migrate_to(empty_db_url, before)

    returncode, lines = await refusal(tmp_path, fakes, empty_db_url)

    assert returncode == 2
    assert lines == [
        f"error: database is at revision {before} but this code needs {HEAD}: "
        'run "python -m bot migrate" first (MIGRATE_ON_START=false)'
    ]
    assert await current_revision(empty_db_url) == before  # nothing was migrated behind the fleet's back

    # The separate step, then the same replica starts.
    migrated = await asyncio.to_thread(run_bot, tmp_path, "migrate", DATABASE_URL=empty_db_url)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == f"database is at the latest migration ({HEAD})"
    monkeypatch.setenv("MIGRATE_ON_START", "false")
    slack, aiml = fakes
    process, http = await start_bot(tmp_path, slack, aiml, 5.0, empty_db_url)
    try:
        assert (await http.get("/readyz")).status_code == 200
    finally:
        await http.aclose()
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0


async def test_an_empty_database_with_migration_off_is_refused_the_same_way_and_left_empty(
    tmp_path, fakes, empty_db_url
):
    returncode, lines = await refusal(tmp_path, fakes, empty_db_url)

    assert returncode == 2
    assert lines == [
        f"error: database is empty (never migrated) but this code needs {HEAD}: "
        'run "python -m bot migrate" first (MIGRATE_ON_START=false)'
    ]
    assert await table_names(empty_db_url) == set()


@pytest.mark.parametrize("migrate_on_start", ["true", "false"])
async def test_a_replica_older_than_the_database_keeps_answering_and_warns_once(
    tmp_path, fakes, empty_db_url, monkeypatch, migrate_on_start
):
    slack, aiml = fakes
    await migrated_by_a_later_release(empty_db_url)
    aiml.enqueue(Reply(content=ANSWER_WORD * 3))
    monkeypatch.setenv("MIGRATE_ON_START", migrate_on_start)

    process, http = await start_bot(tmp_path, slack, aiml, 5.0, empty_db_url)
    try:
        await send_mention(http, "100.000001")
        await eventually(
            lambda: any(m.bot_id and m.markdown == ANSWER_WORD * 3 for m in slack.messages("C1"))
        )
    finally:
        await http.aclose()
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()[-2000:]

    warnings = [json.loads(line) for line in err.decode().splitlines() if LATER_RELEASE in line]
    assert [w["level"] for w in warnings] == ["warning"]
    assert f"newer than this code's {HEAD}" in warnings[0]["event"]
    # Never downgraded, and the later release's additions are still there.
    assert await current_revision(empty_db_url) == LATER_RELEASE
    assert {"later_things", "messages"} <= await table_names(empty_db_url)


async def test_migrate_on_a_database_a_later_release_migrated_succeeds_and_changes_nothing(
    tmp_path, empty_db_url
):
    # A rollback runs the older release's migration step: it must not fail the rollout.
    await migrated_by_a_later_release(empty_db_url)

    result = await asyncio.to_thread(run_bot, tmp_path, "migrate", DATABASE_URL=empty_db_url)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"database is at revision {LATER_RELEASE}, newer than this code's {HEAD}: left as it is"
    )
    assert await current_revision(empty_db_url) == LATER_RELEASE
    assert "later_things" in await table_names(empty_db_url)
