"""`python -m bench [--quick] [--scenario a,c] [--mode edits,auto] [--postgres] [--slack-latency MS] ...`.

By default the fake Slack has Slack's real rate limits and about 60 ms of latency per call, and (a) and
(b) run in every streaming mode (SLACK_STREAMING edits, native, auto), the others in the bot's default
(a full run takes under 15 minutes); `--quick` runs chat.update 12x faster and (a) with 5 replies.
`--scenario b --mode auto` is one run at Slack's real limits, for checking one figure (about 2 minutes).
`--scenario tools` measures what the tool loop adds to each tool round of a turn, on its own (bench/tools.py).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from bench.runner import DEFAULT_OUTPUT, quiet_library_logs, run_bench, select, slack_model
from bench.scenarios import MODES, SCENARIOS


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--scenario",
        "--only",
        dest="only",
        metavar="KEYS",
        help=f"comma-separated scenarios to run (of {','.join(SCENARIOS)}; default all)",
    )
    parser.add_argument(
        "--mode",
        metavar="MODES",
        help=f"comma-separated SLACK_STREAMING modes (of {','.join(MODES)}) to run every chosen scenario in;"
        " default: (a) and (b) in each, the others in the bot's default",
    )
    parser.add_argument(
        "--no-overlap",
        action="store_true",
        help="run (a) on its own instead of alongside (c)'s wait for Slack's pace (slower, quieter)",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="a fresh database on postgresql+asyncpg://postgres@127.0.0.1:5432 instead of SQLite",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="for development: chat.update 12x Slack's rate, 5 single replies in (a); labelled quick",
    )
    parser.add_argument(
        "--slack-latency",
        type=float,
        default=60.0,
        metavar="MS",
        help="median latency of the fake Slack per call, lognormal with a tail; 0 for none (default 60)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the latency draws (default 1)")
    parser.add_argument(
        "--bot-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a bot setting for every run, over the scenario's own (repeat; e.g. the access and quota"
        " settings, to measure what governance costs a turn)",
    )
    parser.add_argument("--no-sql-count", action="store_true", help="skip the in-process SQL count of (e)")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON file (default {DEFAULT_OUTPUT})"
    )
    args = parser.parse_args()
    if args.only == "tools":  # the tool loop's own measure: in process, no bot process or Slack
        from bench.tools import main as tools_main

        return tools_main()
    unknown = set(args.only.split(",")) - set(SCENARIOS) if args.only else set()
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    unknown = set(args.mode.split(",")) - set(MODES) if args.mode else set()
    if unknown:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    if not 0 <= args.slack_latency <= 10_000:
        parser.error(f"--slack-latency must be between 0 and 10000 ms, not {args.slack_latency:g}")
    bad = [item for item in args.bot_env if "=" not in item]
    if bad:
        parser.error(f"--bot-env takes NAME=VALUE, not {bad[0]!r}")
    extra = dict(item.split("=", 1) for item in args.bot_env)
    quiet_library_logs()
    data = asyncio.run(
        run_bench(
            select(args.only, args.quick, args.mode, extra),
            model=slack_model(args.quick, args.slack_latency, args.seed),
            db="postgres" if args.postgres else "sqlite",
            output=args.output,
            sql_count=not args.no_sql_count,
            overlap=not args.no_overlap,
        )
    )
    failed = [t for t in data["targets"] if t["pass"] is False]
    return 1 if failed else 0


raise SystemExit(main())
