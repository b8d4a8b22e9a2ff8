"""The benchmark's own code path, shortened: scenario (a) with 40 chunks against the real bot process."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bench.runner import run_bench
from bench.scenarios import SCENARIOS


async def test_a_short_single_stream_benchmark_writes_complete_results(tmp_path: Path) -> None:
    short = dataclasses.replace(SCENARIOS["a"], words=40)
    output = tmp_path / "latest.json"

    await run_bench([short], output=output, log=False)

    data = json.loads(output.read_text())
    result = data["scenarios"]["a"]
    assert result["complete_pct"] == 100.0
    assert result["errors"]["count"] == 0 and result["bot_exit_code"] == 0
    assert result["stream"]["chunks"] == 40
    for metric in ("ack_ms", "placeholder_ms", "stream_overhead_ms", "last_token_to_final_ms"):
        assert result[metric]["n"] == 1 and result[metric]["p50"] is not None, metric
        assert result[metric]["p99"] is not None, metric
    assert result["edits_per_reply"]["mean"] >= 1
    assert result["slack_429s"] == 0
    assert result["replies_per_second"] > 0
    assert result["bot_peak_rss_mb"] > 0 and result["bot_cpu_seconds_per_reply"] > 0
    verdicts = {t["target"]: t["pass"] for t in data["targets"]}
    assert verdicts["(a) complete, no errors"] is True
