"""`python -m bench [--only a,c] [--postgres] [--real-limits] [--output FILE]`."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from bench.runner import DEFAULT_OUTPUT, quiet_library_logs, run_bench, select
from bench.scenarios import SCENARIOS


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only", metavar="KEYS", help=f"comma-separated scenarios to run (of {','.join(SCENARIOS)})"
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="a fresh database on postgresql+asyncpg://postgres@127.0.0.1:5432 instead of SQLite",
    )
    parser.add_argument(
        "--real-limits",
        action="store_true",
        help="run (c)-(e) at Slack's 50 chat.update a minute too (much slower: minutes per scenario)",
    )
    parser.add_argument("--no-sql-count", action="store_true", help="skip the in-process SQL count of (e)")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON file (default {DEFAULT_OUTPUT})"
    )
    args = parser.parse_args()
    unknown = set(args.only.split(",")) - set(SCENARIOS) if args.only else set()
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    quiet_library_logs()
    data = asyncio.run(
        run_bench(
            select(args.only, args.real_limits),
            db="postgres" if args.postgres else "sqlite",
            output=args.output,
            sql_count=not args.no_sql_count,
        )
    )
    failed = [t for t in data["targets"] if t["pass"] is False]
    return 1 if failed else 0


raise SystemExit(main())
