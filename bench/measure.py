"""The figures of one many-streams run (a-d), from what the fakes recorded: per reply, then summarised.

Times of what a person sees come from the fake Slack's call log (`bench.calls`), so they hold in every
streaming mode: the status line, the first answer text, the final state. Chunk lag comes from the
message states the fake showed (`BenchSlack.shown`).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from bench.calls import (
    calls_by_method,
    calls_per_reply,
    first_status_at,
    first_text_at,
    last_visible_at,
    message_index,
)
from bench.observe import ThreadView, chunk_spans, shown_by_thread, threads, upstream_by_tag
from bench.stats import Span, spans_ms

if TYPE_CHECKING:
    from bench.driver import Conversation
    from bench.fakes import BenchSlack, SlackModel
    from bench.scenarios import StreamScenario
    from tests.fakes.aimlapi import FakeAimlApi

NAN = float("nan")


def stream_result(
    s: StreamScenario,
    model: SlackModel,
    slack: BenchSlack,
    aiml: FakeAimlApi,
    convs: list[Conversation],
    pieces: list[str],
    calls_from: int,
    deadlines: dict[int, float],
) -> dict[str, Any]:
    expected = "".join(pieces)
    channels = {c.channel for c in convs}
    views = threads(slack, channels)
    shown = shown_by_thread(slack)
    ups = upstream_by_tag(aiml)
    calls = slack.calls[calls_from:]
    index = message_index(m for channel in channels for m in slack.messages(channel))
    status_at, text_at = first_status_at(calls, index), first_text_at(calls, index)
    visible_at = last_visible_at(calls, index)
    ack: list[Span] = []
    placeholder: list[Span] = []
    status: list[Span] = []
    first_text: list[Span] = []
    overhead: list[Span] = []
    tail: list[Span] = []
    total: list[Span] = []
    chunks: list[Span] = []
    edits, complete = [], 0
    for c in convs:
        deadline = deadlines[c.index]
        thread = (c.channel, c.root_ts)
        view = views.get(thread, ThreadView())
        up = ups.get(c.tag)
        sent = up.content_sent_at if up is not None else []
        # A reply the model never streamed to counts from its event, up to the deadline.
        first_token, last_token = (sent[0], sent[-1]) if sent else (c.sent_at, c.sent_at)
        text = text_at.get(thread, NAN)
        final = visible_at.get(thread, NAN) if view.done else NAN
        ack.append(Span(c.sent_at, c.acked_at, deadline))
        placeholder.append(Span(c.sent_at, view.placeholder_at, deadline))
        status.append(Span(c.sent_at, status_at.get(thread, NAN), deadline))
        first_text.append(Span(c.sent_at, text, deadline))
        overhead.append(Span(first_token, text, deadline))
        tail.append(Span(last_token, final, deadline))
        total.append(Span(c.sent_at, final, deadline))
        chunks.extend(chunk_spans(pieces, sent, shown.get(thread, []), deadline))
        edits.append(view.edits)
        complete += view.done and view.answer == expected
    finals = [t.end for t in total if not t.never]
    span = (max(finals) - min(c.sent_at for c in convs)) if finals else NAN
    rejected = Counter(call.method for call in calls if call.status == 429)
    return {
        "title": s.title,
        "streaming": s.streaming or "default",
        "conversations": s.conversations,
        "sequential": s.sequential,
        "workspaces": s.teams,
        "channels": len(channels),
        "ramp_seconds": s.ramp_seconds,
        "stream": {
            "words": s.words,
            "chunks": len(pieces),
            "ttft_s": s.ttft,
            "chunk_interval_s": s.chunk_interval,
        },
        "slack": model.label,
        "slack_chat_update_per_minute": model.updates_per_minute,
        "bot_env": s.environment(model),
        "ack_ms": spans_ms(ack),
        "ack_non_200": sum(1 for c in convs if c.ack_status != 200),
        "placeholder_ms": spans_ms(placeholder),
        "status_shown_ms": spans_ms(status),
        "first_text_ms": spans_ms(first_text),
        "stream_overhead_ms": spans_ms(overhead),
        "chunk_lag_ms": spans_ms(chunks),
        "last_token_to_final_ms": spans_ms(tail),
        "event_to_final_ms": spans_ms(total),
        "edits_per_reply": {"mean": round(sum(edits) / len(edits), 2), "max": max(edits)},
        "slack_calls_per_reply": calls_per_reply(calls, len(convs)),
        "slack_calls_by_method": calls_by_method(calls),
        "slack_429s": sum(rejected.values()),
        "slack_429s_by_method": dict(rejected),
        "complete_replies": complete,
        "complete_pct": round(100.0 * complete / len(convs), 2),
        "duration_s": round(span, 2),
        "replies_per_second": round(complete / span, 2) if span == span and span > 0 else None,
    }
