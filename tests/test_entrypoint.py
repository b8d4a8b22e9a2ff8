"""The container entrypoint, run outside Docker (no Docker engine here): migrate, then the command."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot.storage.migrate import head_revision
from tests.test_cli import bot_env

ENTRYPOINT = Path(__file__).resolve().parent.parent / "docker" / "entrypoint.sh"


def run_entrypoint(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = bot_env(tmp_path, **env)
    # As in the image (PATH=/opt/venv/bin:...): `python` is the interpreter the bot is installed in.
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_applies_migrations_before_starting(tmp_path):
    # Slack is unreachable, so `run` stops right after the migrations with one clear line.
    result = run_entrypoint(
        tmp_path,
        "run",
        SLACK_BOT_TOKEN="xoxb-1",
        SLACK_SIGNING_SECRET="s",
        AIMLAPI_KEY="k",
        SLACK_API_URL="http://127.0.0.1:1/api/",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: SLACK_API_URL: cannot reach Slack")
    tables = {r[0] for r in sqlite3.connect(tmp_path / "bot.db").execute("SELECT name FROM sqlite_master")}
    assert "conversations" in tables


def test_other_commands_pass_through(tmp_path):
    result = run_entrypoint(tmp_path, "digest", "--date", "2026-01-01", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "No usage" in result.stdout


def test_a_relative_sqlite_path_gives_way_to_the_images_volume_so_no_upgrade_loses_the_database(tmp_path):
    # The old .env.example's value: with WORKDIR /app it would land in the container's own layer.
    volume = tmp_path / "volume"
    volume.mkdir()
    result = run_entrypoint(
        tmp_path,
        "migrate",
        DATABASE_URL="sqlite+aiosqlite:///data/bot.db",
        IMAGE_DATABASE_URL=f"sqlite+aiosqlite:///{volume}/bot.db",
    )
    assert result.returncode == 0, result.stderr
    warning = result.stderr.strip().splitlines()[0]
    assert warning.startswith("warning: DATABASE_URL: the SQLite path 'data/bot.db' is relative")
    assert "/data volume" in warning
    assert (volume / "bot.db").exists()  # the image's database was migrated...
    assert not (tmp_path / "data").exists()  # ...and nothing landed in the container's layer


def test_an_absolute_sqlite_path_and_postgresql_pass_the_check(tmp_path):
    absolute = run_entrypoint(tmp_path, "migrate", DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/abs.db")
    assert absolute.returncode == 0, absolute.stderr
    assert (tmp_path / "abs.db").exists()
    # PostgreSQL is not a path: it gets past the check (and fails here only for want of a server).
    postgres = run_entrypoint(tmp_path, "migrate", DATABASE_URL="postgresql+asyncpg://bot@127.0.0.1:1/bot")
    assert postgres.returncode == 2
    assert "relative" not in postgres.stderr and "127.0.0.1" in postgres.stderr


@pytest.mark.parametrize("off", ["false", "False", "0", "no", "off"])
async def test_with_migration_on_start_off_the_entrypoint_leaves_the_database_and_run_refuses(
    tmp_path, fakes, off
):
    slack, aiml = fakes
    result = await asyncio.to_thread(
        run_entrypoint,
        tmp_path,
        "run",
        MIGRATE_ON_START=off,
        SLACK_BOT_TOKEN="xoxb-test",
        SLACK_SIGNING_SECRET="s",
        SLACK_API_URL=slack.api_url,
        AIMLAPI_KEY="k",
        AIMLAPI_BASE_URL=aiml.base_url,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: database is empty (never migrated) but this code needs {head_revision()}: "
        'run "python -m bot migrate" first (MIGRATE_ON_START=false)'
    ]
    tables = {r[0] for r in sqlite3.connect(tmp_path / "bot.db").execute("SELECT name FROM sqlite_master")}
    assert "conversations" not in tables


def test_the_migrate_command_migrates_even_with_migration_on_start_off(tmp_path):
    # The one-shot migration Job / compose service runs the same image with the fleet's settings.
    result = run_entrypoint(tmp_path, "migrate", MIGRATE_ON_START="false")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"database is at the latest migration ({head_revision()})"
