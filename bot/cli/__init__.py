"""Command line: `python -m bot [run|migrate|chat|digest]`; settings are read once, here."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import date

from bot.logs import configure_logging
from bot.settings import Settings, SettingsError, load_settings
from bot.storage.db import DatabaseError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot", description="GLM-5 Slack assistant")
    commands = parser.add_subparsers(dest="command", metavar="{run,migrate,chat,digest}")
    commands.add_parser("run", help="apply migrations (MIGRATE_ON_START), then serve Slack (default)")
    commands.add_parser("migrate", help="apply database migrations (alembic upgrade head)")
    commands.add_parser("chat", help="talk to the bot in this terminal")
    digest = commands.add_parser("digest", help="build the usage digest for a day now")
    digest.add_argument("--date", type=date.fromisoformat, help="the day, YYYY-MM-DD (default: yesterday)")
    digest.add_argument("--dry-run", action="store_true", help="print the digest instead of posting it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    try:
        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        return _dispatch(command, args, settings)
    except (SettingsError, DatabaseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(command: str, args: argparse.Namespace, settings: Settings) -> int:
    if command == "migrate":
        from bot.storage.migrate import upgrade_head

        state = asyncio.run(upgrade_head(settings.database_url))
        if state.newer:
            # A rollback's migration step (an older release's Job) must not fail: nothing to undo.
            newer = f"database is at revision {state.database}, newer than this code's {state.code}"
            print(f"{newer}: left as it is")
        else:
            print(f"database is at the latest migration ({state.code})")
        return 0
    if command == "chat":
        from bot.cli.chat import chat_command

        return asyncio.run(chat_command(settings))
    if command == "digest":
        from bot.cli.digest import digest_command

        return asyncio.run(digest_command(settings, args.date, args.dry_run))
    from bot.app import run_bot
    from bot.event_loop import run

    return run(run_bot(settings))
