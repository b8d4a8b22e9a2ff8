"""The benchmark's own code path, shortened: scenario (a) with 2 replies of 40 chunks against the real
bot process, behind a fake Slack with Slack's real limits and latency."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench.fakes import SlackModel
from bench.runner import SETTLE_SECONDS, run_bench
from bench.scenarios import SCENARIOS, ReplicaScenario, StreamScenario, in_modes, quick


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


@pytest.mark.postgres
@pytest.mark.usefixtures("_postgres_server")
async def test_the_replica_scenario_kills_one_replica_and_reports_every_reply_and_each_replica(
    tmp_path: Path,
) -> None:
    f = SCENARIOS["f"]
    assert isinstance(f, ReplicaScenario) and f.conversations == 150 and f.replicas == 3
    small_f = quick(f)
    assert isinstance(small_f, ReplicaScenario) and small_f.conversations < f.conversations
    # Six replies of 8 s; the kill comes 6 s in, past each reply's first checkpoint (5 s), which
    # stores its Slack message for the replica that finishes it.
    small = dataclasses.replace(f, conversations=6, ordered_threads=0, ramp_seconds=0.0, kill_at=0.75)
    output = tmp_path / "latest.json"

    await run_bench(
        [small], model=SlackModel(update_speedup=12.0, latency_p50_ms=5.0), output=output, log=False
    )

    data = json.loads(output.read_text())
    result = data["scenarios"]["f"]
    assert [p["killed"] for p in result["per_replica"]] == [False, True, False]
    assert result["per_replica"][1]["exit_code"] == -9
    assert all(p["cpu_seconds"] > 0 and p["peak_rss_mb"] > 0 for p in result["per_replica"])
    assert result["balancer"]["served_by_replica"] == {"0": 3, "1": 3, "2": 3}  # warm-ups and replies
    killed = result["killed"]
    assert killed["streaming_at_kill"] == killed["left_with_killed"] == killed["interrupted_replies"] == 2
    assert killed["interrupted_not_on_killed"] == 0 and killed["kill_to_note_s"]["max"] <= 60_000
    assert result["outcomes"] == {"complete": 4, "interrupted": 2} and result["complete_pct"] == 100.0
    for metric in ("ack_ms", "placeholder_or_status_ms", "first_text_ms", "event_to_final_ms"):
        assert result[metric]["n"] == 6 and result[metric]["never"] == 0, metric
    assert result["errors"]["count"] == 0 and result["bot_exit_code"] == 0
    verdicts = {t["target"]: t["pass"] for t in data["targets"]}
    assert verdicts["(f) killed replica's replies finished within 60 s"] is True
    assert verdicts["(f) complete, no errors"] is True


async def test_the_tools_scenario_reports_a_positive_overhead_per_tool_round() -> None:
    from bench.tools import measure

    result = await measure(turns=5)

    assert result["turns"] == 5
    assert result["median_ms"] > 0 and result["p95_ms"] >= result["median_ms"]
    assert result["max_ms"] >= result["p95_ms"] and result["plain_turn_ms"] > 0


def test_the_tools_scenario_divides_what_a_tool_turn_adds_by_its_tool_rounds_only() -> None:
    from bench.tools import per_tool_round

    # A plain turn is the answer's round; a tool turn adds its two tool rounds to it.
    assert per_tool_round([100.0, 40.0 + 2 * 35.0], 40.0) == [30.0, 35.0]
