"""The benchmark's printed tables, its verdict against the targets, and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.calls import short_calls


def _pair(summary: dict[str, Any] | None) -> str:
    """`p50 / p99`, and how many samples never happened (they are in the percentiles at their deadline)."""
    if not summary or summary.get("p50") is None:
        return "-"
    never = summary.get("never") or 0
    return f"{summary['p50']:.0f} / {summary['p99']:.0f}" + (f" ({never} never)" if never else "")


def _three(summary: dict[str, Any] | None) -> str:
    """`p50 / p95 / p99` in seconds, and how many never happened (in the percentiles at their deadline)."""
    if not summary or summary.get("p50") is None:
        return "-"
    never = summary.get("never") or 0
    values = " / ".join(f"{summary[q] / 1000:.1f}" for q in ("p50", "p95", "p99"))
    return values + (f" ({never} never)" if never else "")


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def format_tables(scenarios: dict[str, dict[str, Any]], mode: str) -> str:
    streams = {k: v for k, v in scenarios.items() if "stream_overhead_ms" in v}
    out = [f"Slack: {mode}"]
    out += [f"({k}) {v['title']}: FAILED: {v['failed']}" for k, v in scenarios.items() if "failed" in v]
    if streams:
        out.append(
            'Latency, ms (p50 / p99 over every reply; "never": replies, or chunks, that never got there,'
            ' counted at the time the bench stopped waiting; "placeholder": the first message of the reply,'
            " a native stream's start too)"
        )
        out.append(
            _table(
                [
                    "scenario",
                    "n",
                    "ack",
                    "placeholder",
                    "stream overhead",
                    "chunk lag",
                    "last token->final",
                    "event->final",
                ],
                [
                    [
                        f"({k}) {v['title']}",
                        str(v["conversations"]),
                        _pair(v["ack_ms"]),
                        _pair(v["placeholder_ms"]),
                        _pair(v["stream_overhead_ms"]),
                        _pair(v["chunk_lag_ms"]),
                        _pair(v["last_token_to_final_ms"]),
                        _pair(v["event_to_final_ms"]),
                    ]
                    for k, v in streams.items()
                ],
            )
        )
        out.append("")
        out.append("Throughput and resources")
        out.append(
            _table(
                [
                    "scenario",
                    "edits/reply",
                    "429s",
                    "complete",
                    "replies/s",
                    "peak RSS MB",
                    "CPU s/reply",
                    "errors",
                    "edits/min",
                    "Slack",
                    "other CPU",
                ],
                [
                    [
                        f"({k}) {v['title']}",
                        f"{v['edits_per_reply']['mean']:.1f}",
                        str(v["slack_429s"]),
                        f"{v['complete_pct']:.0f} %",
                        _num(v["replies_per_second"], "{:.2f}"),
                        _num(v["bot_peak_rss_mb"]),
                        _num(v["bot_cpu_seconds_per_reply"], "{:.3f}"),
                        str(v["errors"]["count"]),
                        f"{v['slack_chat_update_per_minute']:.0f}",
                        v["slack"],
                        _other_cpu(v),
                    ]
                    for k, v in streams.items()
                ],
            )
        )
    modes = {k: v for k, v in streams.items() if "first_text_ms" in v}
    if modes:
        out.append("")
        out.append(_modes_table(modes))
    for k, v in scenarios.items():
        if "per_turn" in v:
            out.append("")
            out.append(_deep_table(k, v))
    replicas = {k: v for k, v in scenarios.items() if "per_replica" in v}
    if replicas:
        out.append("")
        out.append(_replicas_table(replicas))
    return "\n".join(out)


def _replicas_table(runs: dict[str, dict[str, Any]]) -> str:
    """(f): replicas behind a balancer, one killed; ms from the event (p50 / p99 over every reply)."""
    head = (
        "Replicas on one PostgreSQL, one killed halfway: ms from the event, p50 / p99 over every reply"
        ' ("done": final, or finished by another replica with the interrupted note)'
    )
    rows = []
    for k, v in runs.items():
        killed, order = v["killed"], v["order"]
        note = killed["kill_to_note_s"]
        rows.append(
            [
                f"({k}) {v['title']}",
                _pair(v["placeholder_or_status_ms"]),
                _pair(v["first_text_ms"]),
                _pair(v["event_to_final_ms"]),
                f"{v['complete_pct']:.0f} %",
                f"{killed['interrupted_replies']}/{killed['left_with_killed']}",
                "-" if note is None else f"{note['p50'] / 1000:.0f} / {note['max'] / 1000:.0f}",
                f"{order['kept']}/{order['threads']}",
                str(v["slack_429s"]),
                "  ".join(
                    f"{p['cpu_seconds']:.1f}s/{p['peak_rss_mb']:.0f}MB" + ("†" if p["killed"] else "")
                    for p in v["per_replica"]
                ),
            ]
        )
    header = [
        "run",
        "placeholder/status",
        "first text",
        "final",
        "done",
        "noted/left with the killed",
        "kill->note s p50/max",
        "order kept",
        "429s",
        "CPU/peak RSS per replica (†: killed)",
    ]
    return "\n".join([head, _table(header, rows)])


def _modes_table(runs: dict[str, dict[str, Any]]) -> str:
    """What a person sees, per streaming mode: the (a) and (b) runs side by side."""
    head = (
        "What a person sees, by streaming mode: seconds from the event (p50 / p95 / p99 over every reply);"
        ' Slack calls per reply by method (every attempt); "default": the bot\'s own mode'
    )
    rows = [
        [
            f"({k}) {v['title']}",
            v.get("streaming", "default"),
            _three(v["status_shown_ms"]),
            _three(v["first_text_ms"]),
            _three(v["last_token_to_final_ms"]),
            short_calls(v.get("slack_calls_per_reply", {})),
            str(v["slack_429s"]),
            f"{v['complete_pct']:.0f} %",
        ]
        for k, v in runs.items()
    ]
    header = [
        "run",
        "mode",
        "status shown",
        "first answer text",
        "last token->final",
        "Slack calls/reply",
        "429s",
        "complete",
    ]
    return "\n".join([head, _table(header, rows)])


def _other_cpu(v: dict[str, Any]) -> str:
    """Share of the machine's CPU that other processes used meanwhile (noise on a shared machine)."""
    cpu = v.get("cpu_seconds") or {}
    capacity = cpu.get("wall_s", 0) * cpu.get("cores", 1)
    return f"{100 * cpu['other_processes_s'] / capacity:.0f} %" if capacity else "-"


def _deep_table(key: str, v: dict[str, Any]) -> str:
    sql = {r["turn"]: r["statements"] for r in v.get("sql_per_turn", [])}
    rows = [
        [
            str(r["turn"]),
            _num(r["ack_ms"]),
            _num(r["placeholder_ms"]),
            _num(r["upstream_request_ms"]),
            _num(r["final_ms"]),
            _num(r.get("cpu_ms")),
            _num(r["upstream_messages"], "{}"),
            _num(sql.get(r["turn"]), "{}"),
            "yes" if r["complete"] else "NO",
        ]
        for r in v["per_turn"]
    ]
    slopes = v["slope_ms_per_turn"]
    head = f"({key}) {v['title']}: per turn, ms from the event"
    table = _table(
        [
            "turn",
            "ack",
            "placeholder",
            "upstream req",
            "final edit",
            "CPU",
            "msgs sent",
            "SQL stmts",
            "complete",
        ],
        rows,
    )
    fmt = "{:+.2f}"
    tail = (
        f"slope, ms per turn (turns 2..{v['turns']}): placeholder {_num(slopes['placeholder'], fmt)}, "
        f"upstream request {_num(slopes['upstream_request'], fmt)}, final edit {_num(slopes['final'], fmt)}, "
        f"CPU {_num(slopes.get('cpu'), fmt)}"
        f"; peak RSS {_num(v['bot_peak_rss_mb'])} MB, "
        f"CPU {_num(v['bot_cpu_seconds_per_reply'], '{:.3f}')} s/turn, "
        f"429s {v['slack_429s']}, errors {v['errors']['count']}, other CPU {_other_cpu(v)}; "
        f"ack {_pair(v['ack_ms'])}, placeholder {_pair(v['placeholder_ms'])}, "
        f"event->final {_pair(v['event_to_final_ms'])} ms (p50 / p99 over all {v['turns']} turns); "
        f"{v['slack']}"
    )
    return "\n".join([head, table, tail])


def format_targets(targets: list[dict[str, Any]]) -> str:
    rows = [
        [t["target"], str(t["value"]), t["limit"], {True: "PASS", False: "FAIL", None: "not run"}[t["pass"]]]
        for t in targets
    ]
    return "Targets\n" + _table(["target", "value", "limit", "verdict"], rows)


def format_summary(scenarios: dict[str, dict[str, Any]], mode: str, total_seconds: float) -> str:
    """One Markdown table of the figures a closing note quotes (ms, p50/p99 over every reply)."""
    head = (
        "| scenario | ack | placeholder | stream overhead | chunk lag | last token->final p50 "
        "| edits/reply | 429s | complete | peak RSS MB | CPU s/reply |"
    )
    lines = [f"{mode}; the run took {total_seconds:.0f} s", head, "|" + "---|" * 11]
    for k, v in scenarios.items():
        if "failed" in v:
            lines.append(f"| ({k}) {v['title']} | FAILED | " + " | " * 9)
            continue
        if "per_replica" in v:  # (f): its own table (format_tables) has the figures
            cells = [f"({k}) {v['title']}", _pair(v["ack_ms"]).replace(" / ", "/")]
            cells += [_pair(v["placeholder_or_status_ms"]).replace(" / ", "/"), "-", "-", "-", "-"]
            cells += [
                str(v["slack_429s"]),
                f"{v['complete_pct']:.0f} %",
                _num(v["bot_peak_rss_mb"], "{:.0f}"),
            ]
            cells.append(_num(v["bot_cpu_seconds_per_reply"], "{:.2f}"))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        deep = "per_turn" in v
        dash = "-"
        cells = [
            f"({k}) {v['title']}",
            _pair(v["ack_ms"]).replace(" / ", "/"),
            _pair(v["placeholder_ms"]).replace(" / ", "/"),
            dash if deep else _pair(v["stream_overhead_ms"]).replace(" / ", "/"),
            dash if deep else _pair(v["chunk_lag_ms"]).replace(" / ", "/"),
            dash if deep else _num(v["last_token_to_final_ms"]["p50"], "{:.0f}"),
            dash if deep else f"{v['edits_per_reply']['mean']:.1f}",
            str(v["slack_429s"]),
            f"{v['complete_pct']:.0f} %",
            _num(v["bot_peak_rss_mb"], "{:.0f}"),
            _num(v["bot_cpu_seconds_per_reply"], "{:.2f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    modes = [(k, v) for k, v in scenarios.items() if "first_text_ms" in v and "per_replica" not in v]
    if modes:
        lines += [
            "",
            "| run | mode | status shown s | first answer text s | last token->final s "
            "| Slack calls/reply | 429s | complete |",
            "|" + "---|" * 8,
        ]
        for k, v in modes:
            cells = [
                f"({k}) {v['title']}",
                v.get("streaming", "default"),
                _three(v["status_shown_ms"]),
                _three(v["first_text_ms"]),
                _three(v["last_token_to_final_ms"]),
                short_calls(v.get("slack_calls_per_reply", {})),
                str(v["slack_429s"]),
                f"{v['complete_pct']:.0f} %",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
