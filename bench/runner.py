"""Runs the chosen scenarios in sequence and assembles the results: tables, targets, JSON."""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.deep import run_deep, sql_statements_per_turn
from bench.report import evaluate, format_tables, format_targets, write_json
from bench.scenarios import (
    SCENARIOS,
    SLACK_UPDATES_PER_MINUTE,
    DeepScenario,
    Scenario,
    StreamScenario,
    run_stream,
)

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "latest.json"


def with_real_limits(scenario: Scenario) -> Scenario:
    """The scenario against Slack's own chat.update rate (and the bot's default budget)."""
    env = {k: v for k, v in scenario.bot_env.items() if not k.startswith("SLACK_EDIT")}
    return dataclasses.replace(scenario, slack_updates_per_minute=SLACK_UPDATES_PER_MINUTE, bot_env=env)


async def run_bench(
    scenarios: Sequence[Scenario],
    *,
    db: str = "sqlite",
    output: Path | None = DEFAULT_OUTPUT,
    sql_count: bool = True,
    log: bool = True,
) -> dict[str, Any]:
    """Run `scenarios` one after another (each against a fresh bot process and database)."""
    started = time.monotonic()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.001)  # the driver thread waits less for the GIL: steadier ack timings
    try:
        results = await _run_all(scenarios, db, output, sql_count, log)
    finally:
        sys.setswitchinterval(switch)
    total = time.monotonic() - started
    targets = evaluate(results, total if len(scenarios) == len(SCENARIOS) else None)
    data = {
        "meta": {
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "database": db,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "total_seconds": round(total, 1),
        },
        "scenarios": results,
        "targets": targets,
    }
    if output is not None:
        write_json(output, data)
    _say(log, "")
    _say(log, format_tables(results))
    _say(log, "")
    _say(log, format_targets(targets))
    _say(log, f"\ntotal {total:.1f} s" + (f"; results in {output}" if output is not None else ""))
    return data


async def _run_all(
    scenarios: Sequence[Scenario], db: str, output: Path | None, sql_count: bool, log: bool
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    logs = None if output is None else output.parent / "logs"
    for scenario in scenarios:
        _say(log, f"running ({scenario.key}) {scenario.title} ...")
        t0 = time.monotonic()
        try:
            if isinstance(scenario, DeepScenario):
                result = await run_deep(scenario, db, logs)
                if sql_count:
                    result["sql_per_turn"] = await sql_statements_per_turn(scenario.turns, db)
            else:
                result = await run_stream(scenario, db, logs)
        except Exception as exc:  # one broken scenario (e.g. the bot did not start) must not hide the rest
            result = {"title": scenario.title, "failed": f"{type(exc).__name__}: {exc}"[:2000]}
            _say(log, f"  FAILED: {result['failed']}")
        result["wall_seconds"] = round(time.monotonic() - t0, 1)
        results[scenario.key] = result
        _say(log, f"  done in {result['wall_seconds']} s")
    return results


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, flush=True)


def select(keys: str | None, real_limits: bool) -> list[Scenario]:
    chosen = [SCENARIOS[k] for k in (keys.split(",") if keys else SCENARIOS)]
    return [with_real_limits(s) if real_limits else s for s in chosen]


def quiet_library_logs() -> None:
    """The in-process bot of the SQL count logs through the root logger; keep it to warnings."""
    logging.basicConfig(level=logging.WARNING)


__all__ = ["DEFAULT_OUTPUT", "StreamScenario", "run_bench", "select"]
