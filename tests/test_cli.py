"""The command line as an operator meets it: settings errors, migrate from anywhere, terminal chat."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.fakes.aimlapi import FakeAimlApi, Reply

ROOT = Path(__file__).resolve().parent.parent


def bot_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "AIMLAPI_", "DATABASE_", "USAGE_"))
    }
    env.update({"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/bot.db", "LOG_LEVEL": "WARNING"})
    env.update(extra)
    return env


async def query(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows from the database a bot process wrote to (SQLite or PostgreSQL)."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(text(sql))]
    finally:
        await engine.dispose()


async def table_names(database_url: str) -> set[str]:
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


def run_bot(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=tmp_path,  # not the repository: nothing may depend on the working directory
        env=bot_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_missing_required_setting_is_one_clear_line_and_exit_2(tmp_path):
    result = run_bot(tmp_path, "run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: SLACK_BOT_TOKEN is required but not set (see config/.env.example)"
    ]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PORT": "http"}, "PORT"),
        ({"USAGE_DIGEST_TZ": "Mars/Olympus"}, "USAGE_DIGEST_TZ"),
        ({"USAGE_DIGEST_TIME": "9am"}, "USAGE_DIGEST_TIME"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        (
            {"SLACK_BOT_TOKEN": "xoxp-user-token", "AIMLAPI_KEY": "k", "SLACK_SIGNING_SECRET": "s"},
            "SLACK_BOT_TOKEN",
        ),
    ],
)
def test_an_invalid_setting_names_the_variable(tmp_path, env, named):
    result = run_bot(tmp_path, "run", **env)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {named}")
    assert "Traceback" not in result.stderr


def test_an_unreachable_slack_at_start_up_is_one_clear_line(tmp_path):
    result = run_bot(
        tmp_path,
        "run",
        SLACK_BOT_TOKEN="xoxb-1",
        SLACK_SIGNING_SECRET="s",
        AIMLAPI_KEY="k",
        SLACK_API_URL="http://127.0.0.1:1/api/",
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: SLACK_API_URL: cannot reach Slack")


async def test_migrate_works_from_any_directory(tmp_path, empty_db_url):
    result = await asyncio.to_thread(run_bot, tmp_path, "migrate", DATABASE_URL=empty_db_url)
    assert result.returncode == 0, result.stderr
    tables = await table_names(empty_db_url)
    assert {"conversations", "messages", "usage_records", "processed_events", "digest_runs"} <= tables


def test_migrate_against_an_unreachable_database_is_one_line_without_the_password(tmp_path):
    result = run_bot(tmp_path, "migrate", DATABASE_URL="postgresql+asyncpg://bot:hunter2@127.0.0.1:1/bot")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "127.0.0.1" in line and "hunter2" not in line


async def start_chat(tmp_path: Path, aiml: FakeAimlApi, database_url: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "chat",
        cwd=tmp_path,
        env=bot_env(
            tmp_path, AIMLAPI_KEY="test-key", AIMLAPI_BASE_URL=aiml.base_url, DATABASE_URL=database_url
        ),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def stored_messages(database_url: str) -> list[tuple[Any, ...]]:
    return await query(database_url, "SELECT role, content, status FROM messages ORDER BY id")


async def test_chat_streams_answers_and_keeps_the_conversation(tmp_path, aiml, db_url):
    aiml.enqueue(Reply(content="Hello from GLM."))
    aiml.enqueue(Reply(content="You said hi."))
    chat = await start_chat(tmp_path, aiml, db_url)
    out, err = await asyncio.wait_for(chat.communicate(b"hi\nwhat did I say?\n"), 60)
    assert chat.returncode == 0, err.decode()
    text = out.decode()
    assert "Hello from GLM." in text and "You said hi." in text
    assert [m["content"] for m in aiml.requests[1].json["messages"][1:]] == [
        "hi",
        "Hello from GLM.",
        "what did I say?",
    ]
    assert [status for *_, status in await stored_messages(db_url)] == ["complete"] * 4


async def test_ctrl_c_during_an_answer_stops_it_and_marks_it_interrupted(tmp_path, aiml, db_url):
    aiml.enqueue(Reply(content="word " * 400, chunk_size=5, chunk_interval=0.05))
    chat = await start_chat(tmp_path, aiml, db_url)
    assert chat.stdin is not None and chat.stdout is not None
    chat.stdin.write(b"tell me a long story\n")
    await chat.stdin.drain()
    seen = b""
    while b"word" not in seen:
        seen += await asyncio.wait_for(chat.stdout.read(64), 30)
    chat.send_signal(signal.SIGINT)
    while b"interrupted" not in seen:  # the answer ends with its note before we leave
        seen += await asyncio.wait_for(chat.stdout.read(64), 30)
    chat.stdin.close()  # Ctrl-D: leave
    out, err = await asyncio.wait_for(chat.communicate(), 30)
    assert chat.returncode == 0, err.decode()
    assert "interrupted" in (seen + out).decode()
    role, content, status = (await stored_messages(db_url))[-1]
    assert (role, status) == ("assistant", "interrupted")
    assert 0 < len(content) < len("word " * 400)
