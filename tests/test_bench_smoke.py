"""The benchmark's own code path, shortened: scenario (a) with 2 replies of 40 chunks against the real
bot process, behind a fake Slack with Slack's real limits and latency."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bench.fakes import SlackModel
from bench.runner import SETTLE_SECONDS, run_bench
from bench.scenarios import SCENARIOS, StreamScenario, in_modes


async def test_a_short_single_stream_benchmark_writes_complete_results(tmp_path: Path) -> None:
    single = SCENARIOS["a"]
    assert isinstance(single, StreamScenario) and single.sequential and single.conversations >= 20
    short = dataclasses.replace(single, conversations=2, words=40, streaming="edits")
    output = tmp_path / "latest.json"

    await run_bench([short], model=SlackModel(latency_p50_ms=20.0), output=output, log=False)

    data = json.loads(output.read_text())
    assert data["meta"]["mode"] == "full"
    assert data["meta"]["slack"]["real_limits"] is True
    result = data["scenarios"]["a/edits"]
    assert result["bot_env"]["SLACK_STREAMING"] == "edits"
    assert result["complete_pct"] == 100.0
    assert result["errors"]["count"] == 0 and result["bot_exit_code"] == 0
    assert result["stream"]["chunks"] == 40
    for metric in (
        "ack_ms",
        "placeholder_ms",
        "first_text_ms",
        "stream_overhead_ms",
        "last_token_to_final_ms",
    ):
        assert result[metric]["n"] == 2 and result[metric]["never"] == 0, metric
        assert result[metric]["p50"] is not None and result[metric]["p99"] is not None, metric
    # Every chunk of both replies was timed into Slack, and Slack's latency is part of it.
    assert result["chunk_lag_ms"]["n"] == 80 and result["chunk_lag_ms"]["never"] == 0
    assert result["chunk_lag_ms"]["p50"] > 0
    assert result["edits_per_reply"]["mean"] >= 1
    assert result["slack_429s"] == 0
    # Edits show the answer by the placeholder and its edits; the status line is the native work's.
    calls = result["slack_calls_per_reply"]
    assert calls["chat.postMessage"] >= 1 and calls["chat.update"] >= 1
    assert result["slack_calls_by_method"]["chat.update"]["ok"] >= 2
    assert result["first_text_ms"]["p50"] > result["placeholder_ms"]["p50"]
    assert result["status_shown_ms"]["n"] == 2
    assert result["replies_per_second"] > 0
    assert result["bot_peak_rss_mb"] > 0 and result["bot_cpu_seconds_per_reply"] > 0
    verdicts = {t["target"]: t["pass"] for t in data["targets"]}
    assert verdicts["(a/edits) complete, no errors"] is True
    assert verdicts["(a/edits) streaming overhead p50"] is not None


async def test_the_single_streams_of_every_mode_run_side_by_side_once_c_has_streamed(tmp_path: Path) -> None:
    single, many = SCENARIOS["a"], SCENARIOS["c"]
    assert isinstance(single, StreamScenario) and isinstance(many, StreamScenario)
    single = dataclasses.replace(single, conversations=1, words=20)
    # 25 final edits against Slack's 50 a minute with a burst of 10: (c) waits for Slack a while.
    many = dataclasses.replace(many, conversations=25, words=20, ramp_seconds=0.0)
    runs = [*in_modes([single], None), many]
    output = tmp_path / "latest.json"

    await run_bench(runs, model=SlackModel(latency_p50_ms=5.0), output=output, log=False, sql_count=False)

    data = json.loads(output.read_text())
    assert list(data["scenarios"]) == ["a/edits", "a/native", "a/auto", "c"]
    c = data["scenarios"]["c"]
    for key in ("a/edits", "a/native", "a/auto"):
        a = data["scenarios"][key]
        assert a["complete_pct"] == 100.0 and a["bot_env"]["SLACK_STREAMING"] == key[2:], key
        assert a["ran_alongside"].startswith("(c)"), key
        # After (c)'s model sent its last chunk and the settling time, while (c) still waits for Slack.
        assert c["started_after_s"] + SETTLE_SECONDS < a["started_after_s"], key
        assert a["started_after_s"] < c["started_after_s"] + c["wall_seconds"], key
    assert c["complete_pct"] == 100.0 and "ran_alongside" not in c
    verdicts = {t["target"]: t["pass"] for t in data["targets"]}
    assert verdicts["(a/auto) streaming overhead p50"] is not None
