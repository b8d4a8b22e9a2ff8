"""The benchmark's statistics: every reply is in every percentile, and chunks are timed into Slack."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench.fakes import Shown
from bench.observe import chunk_spans, common_prefix
from bench.stats import Span, percentile, spans_ms, summary_ms
from bench.targets import evaluate, sql_count_flat

NAN = math.nan


def test_a_reply_that_never_got_there_counts_at_the_deadline_and_as_never() -> None:
    # 98 replies in 100 ms; two never showed anything before the bench gave up 30 s after their event.
    spans = [Span(float(i), i + 0.1, 1000.0) for i in range(98)] + [Span(970.0, NAN, 1000.0)] * 2

    summary = spans_ms(spans)

    assert summary["n"] == 100
    assert summary["never"] == 2
    assert summary["p50"] == 100.0
    assert summary["p99"] == 30_000.0  # without the two missing replies it would be 100 ms


def test_a_reply_that_arrived_only_after_the_deadline_counts_as_never() -> None:
    # The bot stopped (SIGTERM) after the bench gave up and then wrote its "interrupted" edit.
    late = Span(0.0, 12.0, 10.0)

    summary = spans_ms([late])

    assert summary["never"] == 1
    assert summary["p50"] == 10_000.0


def test_summary_refuses_a_missing_value_instead_of_dropping_it() -> None:
    with pytest.raises(ValueError, match="1 of 3 durations are not finite"):
        summary_ms([0.1, NAN, 0.2])


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]

    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([], 50) is None


def _shown(at: float, ts: str, markdown: str) -> Shown:
    return Shown(at, "chat.update", "C1", "1.000001", ts, markdown)


def test_each_chunk_is_timed_until_the_thread_first_shows_it() -> None:
    pieces = ["Hello", " big", " world."]
    sent = [1.0, 1.1, 1.2]
    shown = [
        _shown(1.05, "2.000001", "_Thinking…_"),
        _shown(1.5, "2.000001", "Hello b"),  # the first chunk, half of the second
        _shown(2.5, "2.000001", "Hello big world."),
    ]

    spans = chunk_spans(pieces, sent, shown, deadline=9.0)

    assert [round(s.seconds, 3) for s in spans] == [0.5, 1.4, 1.3]
    assert not any(s.never for s in spans)


def test_a_chunk_continued_in_a_second_message_is_visible_once_that_message_shows_it() -> None:
    pieces = ["One.", " Two."]
    shown = [
        _shown(1.0, "2.000001", "One."),
        _shown(2.0, "2.000002", " Tw"),
        _shown(3.0, "2.000002", " Two."),
    ]

    spans = chunk_spans(pieces, [0.5, 0.6], shown, deadline=9.0)

    assert [s.end for s in spans] == [1.0, 3.0]


def test_chunks_the_thread_never_showed_count_at_the_deadline() -> None:
    pieces = ["Hello", " world."]

    spans = chunk_spans(pieces, [1.0, 2.0], [_shown(1.5, "2.000001", "Hello")], deadline=10.0)

    assert [s.never for s in spans] == [False, True]
    assert spans_ms(spans)["max"] == 8_000.0


def test_common_prefix_counts_shared_leading_characters() -> None:
    assert common_prefix("Hello world", "Hello there") == 6
    assert common_prefix("abc", "abc") == 3
    assert common_prefix("", "abc") == 0
    assert common_prefix("xbc", "abc") == 0


def _overhead_verdicts(p50: float, p99: float, slack: dict[str, Any] | None) -> list[bool | None]:
    scenarios: dict[str, dict[str, Any]] = {
        "a": {
            "stream_overhead_ms": {"p50": p50, "p99": p99},
            "complete_pct": 100.0,
            "errors": {"count": 0},
            "bot_exit_code": 0,
        }
    }
    targets = evaluate(scenarios, "full", None, slack)
    return [t["pass"] for t in targets if t["target"].startswith("(a) streaming overhead")]


def test_the_streaming_overhead_target_adds_only_slacks_own_edit_latency() -> None:
    latency = {"latency": {"p50_ms": 60.0, "sigma": 0.5, "seed": 1, "factor_by_method": {}}}
    # p50 bound 50 + 60 ms; p99 bound 250 + 60 * e^(2.326 * 0.5) = about 442 ms.
    assert _overhead_verdicts(105.0, 400.0, latency) == [True, True]
    assert _overhead_verdicts(115.0, 450.0, latency) == [False, False]
    # Without latency the bot's own 50 / 250 ms are the whole bound.
    assert _overhead_verdicts(55.0, 200.0, None) == [False, True]


def test_statements_per_turn_are_flat_unless_the_fewest_grow_with_depth() -> None:
    steady = [11] * 39
    assert sql_count_flat(steady)
    # Cached settings read again when they expire: a turn here and there has one or two more.
    assert sql_count_flat([11, 12, 11, 11, 13, 11, 11, 12, 11, 11, 11, 11, 11, 11, 12, 11, 11, 11, 11, 11])
    # One more statement per turn once the thread is deep: a cost that grows with it.
    assert not sql_count_flat([11] * 20 + [12] * 19)
    assert not sql_count_flat([11] * 20 + [14])
    assert not sql_count_flat([])


def _deep_verdict(upstream: float, cpu: float | None, final: float) -> bool | None:
    e = {
        "slope_ms_per_turn": {"placeholder": 0.5, "upstream_request": upstream, "final": final, "cpu": cpu},
        "sql_per_turn": [{"turn": n, "statements": 11} for n in range(1, 41)],
        "complete_pct": 100.0,
        "errors": {"count": 0},
        "bot_exit_code": 0,
    }
    targets = evaluate({"e": e}, "full", None, None)
    verdicts: list[bool | None] = [t["pass"] for t in targets if t["target"] == "(e) per-turn cost flat"]
    [verdict] = verdicts
    return verdict


def test_the_per_turn_cost_is_judged_by_cpu_and_the_upstream_request_not_slacks_latency_draws() -> None:
    assert _deep_verdict(0.1, 0.3, 2.8) is True  # the final edit follows the fake's seeded latency
    assert _deep_verdict(0.1, 2.5, 0.0) is False  # the bot spends more CPU each turn
    assert _deep_verdict(2.5, 0.3, 0.0) is False  # more work on the history before asking the model
    assert _deep_verdict(0.1, None, 0.0) is False  # not measured is not flat
