"""Runs the chosen scenarios in sequence and assembles the results: tables, targets, JSON."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.deep import run_deep, sql_statements_per_turn
from bench.fakes import SlackModel
from bench.replicas import run_replicas
from bench.report import format_summary, format_tables, format_targets, write_json
from bench.scenarios import (
    SCENARIOS,
    DeepScenario,
    ReplicaScenario,
    Scenario,
    StreamScenario,
    in_modes,
    quick,
    run_stream,
)
from bench.targets import evaluate

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "latest.json"
QUICK_UPDATE_SPEEDUP = 12.0  # --quick: chat.update 12x Slack's rate, for development
# (a) alongside (c): this long after (c)'s last chunk, once its bot has stored the 200 replies' usage
# and only sends final edits at Slack's pace (under one a second).
SETTLE_SECONDS = 5.0


async def run_bench(
    scenarios: Sequence[Scenario],
    *,
    model: SlackModel | None = None,
    db: str = "sqlite",
    output: Path | None = DEFAULT_OUTPUT,
    sql_count: bool = True,
    log: bool = True,
    overlap: bool = True,
) -> dict[str, Any]:
    """Run `scenarios` one after another (each against a fresh bot process and database) against
    a fake Slack that behaves as `model` says (default: Slack's real limits and latency)."""
    model = model or SlackModel()
    mode = "full" if model.real_limits else "quick"
    _say(log, f"mode: {mode} ({_describe(model)})")
    started = time.monotonic()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.001)  # the driver thread waits less for the GIL: steadier ack timings
    try:
        results = await _run_all(scenarios, model, db, output, sql_count, log, overlap)
    finally:
        sys.setswitchinterval(switch)
    total = time.monotonic() - started
    everything = {s.run_key for s in scenarios} == {s.run_key for s in select(None, False)}
    targets = evaluate(results, mode, total if everything else None, model.describe())
    data = {
        "meta": {
            "mode": mode,
            "slack": model.describe(),
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
    _say(log, format_tables(results, f"{mode}: {_describe(model)}"))
    _say(log, "")
    _say(log, format_targets(targets))
    _say(log, "")
    _say(log, format_summary(results, f"{mode}: {_describe(model)}", total))
    minutes = f"{int(total // 60)} min {total % 60:.0f} s"
    where = f"; results in {output}" if output is not None else ""
    _say(log, f"\nthe {mode} run took {total:.1f} s ({minutes}){where}")
    return data


def _describe(model: SlackModel) -> str:
    latency = (
        f"latency p50 {model.latency_p50_ms:g} ms lognormal sigma {model.latency_sigma:g} seed {model.seed}"
        if model.latency_p50_ms > 0
        else "no latency"
    )
    return f"{model.label}, {latency}"


async def _run_all(
    scenarios: Sequence[Scenario],
    model: SlackModel,
    db: str,
    output: Path | None,
    sql_count: bool,
    log: bool,
    overlap: bool,
) -> dict[str, dict[str, Any]]:
    """Every run, keyed `a/edits` ... `c`, in the order given. The single streams (a) of every mode
    run side by side (a bot each, one reply at a time: the same machine noise for every mode); with
    `overlap`, they start once (c)'s model has sent its last chunk and (c) only waits for Slack's pace."""
    logs = None if output is None else output.parent / "logs"
    singles = [s for s in scenarios if isinstance(s, StreamScenario) and s.sequential]
    host = next((s for s in scenarios if s.key == "c" and s not in singles), None) if overlap else None
    results: dict[str, dict[str, Any]] = {}

    began = time.monotonic()

    async def one(scenario: Scenario, streamed: asyncio.Event | None = None) -> None:
        t0 = time.monotonic()
        try:
            if isinstance(scenario, ReplicaScenario):  # PostgreSQL, whatever `db` says
                result = await run_replicas(scenario, model, logs)
            elif isinstance(scenario, DeepScenario):
                result = await run_deep(scenario, db, model, logs)
                if sql_count:
                    result["sql_per_turn"] = await sql_statements_per_turn(scenario.turns, db)
            else:
                result = await run_stream(scenario, db, model, logs, streamed)
        except Exception as exc:  # one broken scenario (e.g. the bot did not start) must not hide the rest
            result = {"title": scenario.title, "failed": f"{type(exc).__name__}: {exc}"[:2000]}
            _say(log, f"  ({scenario.run_key}) FAILED: {result['failed']}")
        finally:
            if streamed is not None:
                streamed.set()
        result["started_after_s"] = round(t0 - began, 1)  # from the start of the bench
        result["wall_seconds"] = round(time.monotonic() - t0, 1)
        results[scenario.run_key] = result
        _say(log, f"  ({scenario.run_key}) done in {result['wall_seconds']} s")

    async def side_by_side(after: asyncio.Event | None = None) -> None:
        if after is not None:
            await after.wait()
            await asyncio.sleep(SETTLE_SECONDS)
        names = ", ".join(s.run_key for s in singles)
        _say(log, f"running ({names}) {singles[0].title}, side by side ...")
        await asyncio.gather(*(one(s) for s in singles))
        if after is not None and host is not None:
            for s in singles:
                results[s.run_key]["ran_alongside"] = f"({host.run_key}) once its model had sent every chunk"

    for scenario in scenarios:
        if scenario in singles:
            if host is None and scenario is singles[0]:
                await side_by_side()
            continue
        _say(log, f"running ({scenario.run_key}) {scenario.title} ...")
        if scenario is host and singles:
            streamed = asyncio.Event()
            await asyncio.gather(one(scenario, streamed), side_by_side(streamed))
        else:
            await one(scenario)
    order = [s.run_key for s in scenarios]
    return {key: results[key] for key in order if key in results}


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, flush=True)


def select(
    keys: str | None, quick_mode: bool, modes: str | None = None, bot_env: Mapping[str, str] | None = None
) -> list[Scenario]:
    """The runs: scenarios `keys` (all by default), (a) and (b) in every streaming mode unless
    `modes` names some (then every chosen scenario runs in those); `bot_env` over each one's settings."""
    chosen = [SCENARIOS[k] for k in (keys.split(",") if keys else SCENARIOS)]
    if bot_env:
        chosen = [dataclasses.replace(s, bot_env={**s.bot_env, **bot_env}) for s in chosen]
    chosen = [quick(s) for s in chosen] if quick_mode else chosen
    return in_modes(chosen, modes.split(",") if modes else None)


def slack_model(quick_mode: bool, latency_p50_ms: float, seed: int) -> SlackModel:
    speedup = QUICK_UPDATE_SPEEDUP if quick_mode else 1.0
    return SlackModel(update_speedup=speedup, latency_p50_ms=latency_p50_ms, seed=seed)


def quiet_library_logs() -> None:
    """The in-process bot of the SQL count logs through the root logger; keep it to warnings."""
    logging.basicConfig(level=logging.WARNING)


__all__ = ["DEFAULT_OUTPUT", "StreamScenario", "run_bench", "select", "slack_model"]
