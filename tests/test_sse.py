"""SSE lines of a streamed completion become typed events, whatever noise the stream carries."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bot.llm.sse import (
    MAX_EVENT_CHARS,
    ChunkEvent,
    DoneEvent,
    ErrorEvent,
    SseDecoder,
    SseEvent,
    StreamAccumulator,
    iter_events,
    parse_chunk,
    parse_usage,
)
from bot.llm.types import Delta, Usage


def parse_line(line: str) -> SseEvent | None:
    """What the client's decoder makes of one line arriving alone."""
    return SseDecoder().feed(line)


def data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}"


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta if delta is not None else {}, "finish_reason": finish}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "glm-5",
        "choices": [choice],
        **extra,
    }


@pytest.mark.parametrize(
    "line",
    [
        "",
        ": keep-alive",
        ":",
        "event: ping",
        "id: 42",
        "retry: 3000",
        "data: {not json",
        "data:",
        'data: "a string"',
        "data: [1, 2]",
        "data: null",
        "HTTP/1.1 200 OK",
    ],
)
def test_lines_without_a_json_object_carry_no_event(line: str) -> None:
    assert parse_line(line) is None


def test_done_marker_ends_the_stream_with_or_without_a_space() -> None:
    assert parse_line("data: [DONE]") == DoneEvent()
    assert parse_line("data:[DONE]") == DoneEvent()


def test_reasoning_piece_with_null_content_is_reasoning_only() -> None:
    event = parse_line(data(chunk({"role": "assistant", "content": None, "reasoning_content": "Hmm, "})))

    assert event == ChunkEvent(content="", reasoning="Hmm, ", model="glm-5")


def test_content_piece_without_a_space_after_data_is_read() -> None:
    line = "data:" + json.dumps(chunk({"content": "Hello"}))

    assert parse_line(line) == ChunkEvent(content="Hello", model="glm-5")


def test_reasoning_under_the_name_some_routers_use_is_still_reasoning() -> None:
    assert parse_chunk(chunk({"content": None, "reasoning": "think"})) == ChunkEvent(
        reasoning="think", model="glm-5"
    )


@pytest.mark.parametrize("choices", [[], None, [None], [{"index": 0, "delta": None}], [{"index": 0}]])
def test_chunks_with_empty_or_null_choices_carry_no_text(choices: Any) -> None:
    event = parse_chunk({"id": "x", "object": "chat.completion.chunk", "model": "glm-5", "choices": choices})

    assert event == ChunkEvent(model="glm-5")


def test_only_the_first_choice_is_read() -> None:
    payload = chunk({"content": "first"})
    payload["choices"].append({"index": 1, "delta": {"content": "second"}, "finish_reason": None})

    assert parse_chunk(payload) == ChunkEvent(content="first", model="glm-5")


def test_finish_chunk_carries_the_finish_reason() -> None:
    assert parse_chunk(chunk({}, finish="length")) == ChunkEvent(finish_reason="length", model="glm-5")


def test_final_chunk_carries_token_usage_and_credit_cost() -> None:
    payload = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "glm-5",
        "choices": [],
        "usage": {
            "prompt_tokens": 14,
            "completion_tokens": 1334,
            "total_tokens": 1348,
            "prompt_tokens_details": {"cached_tokens": 2},
            "completion_tokens_details": {"reasoning_tokens": 1000},
        },
        "meta": {"usage": {"credits_used": 11136, "usd_spent": 0.005568}},
    }

    event = parse_line(data(payload))

    assert event == ChunkEvent(
        model="glm-5",
        usage=Usage(
            prompt_tokens=14,
            completion_tokens=1334,
            cached_tokens=2,
            reasoning_tokens=1000,
            credits_used=11136,
            usd_spent=0.005568,
        ),
    )


def test_usage_values_that_are_missing_or_nonsense_stay_unknown() -> None:
    usage = parse_usage(
        {
            "usage": {
                "prompt_tokens": 12.0,
                "completion_tokens": True,
                "prompt_tokens_details": None,
                "completion_tokens_details": {"reasoning_tokens": -3},
            },
            "meta": {"usage": {"credits_used": "lots", "usd_spent": float("nan")}},
        }
    )

    assert usage == Usage(prompt_tokens=12)


def test_a_chunk_without_usage_or_meta_has_no_usage() -> None:
    assert parse_usage({"usage": None, "meta": {}}) is None
    assert parse_usage({"usage": {}}) is None


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"error": {"message": "Internal server error", "type": "server_error", "code": None}}, None),
        ({"error": {"message": "slow down", "code": 429}}, 429),
        ({"message": "Service unavailable", "statusCode": 503, "path": "/v1/chat/completions"}, 503),
    ],
)
def test_error_objects_inside_the_stream_become_error_events(
    payload: dict[str, Any], status: int | None
) -> None:
    event = parse_line(data(payload))

    assert isinstance(event, ErrorEvent)
    assert event.status == status
    assert json.loads(event.body) == payload


def test_a_noisy_stream_yields_only_its_real_events_in_order() -> None:
    lines = [
        ": keep-alive",
        "",
        data({"id": "x", "object": "chat.completion.chunk", "model": "glm-5", "choices": []}),
        "data: {garbage",
        data(chunk({"role": "assistant", "content": None, "reasoning_content": "Think."})),
        "",
        data(chunk({"content": "Answer."})),
        "event: ping",
        data(chunk({}, finish="stop")),
        "data: [DONE]",
    ]

    events = list(iter_events(lines))

    assert [type(e).__name__ for e in events] == ["ChunkEvent"] * 4 + ["DoneEvent"]


def test_accumulator_keeps_content_and_reasoning_apart_and_merges_split_usage() -> None:
    answer = StreamAccumulator()
    deltas = [
        answer.apply(ChunkEvent(reasoning="Let me ", model="glm-5")),
        answer.apply(ChunkEvent(reasoning="think.")),
        answer.apply(ChunkEvent(content="Hello")),
        answer.apply(ChunkEvent(content=" world")),
        answer.apply(ChunkEvent(finish_reason="stop", usage=Usage(prompt_tokens=5, completion_tokens=4))),
        answer.apply(ChunkEvent(usage=Usage(credits_used=100, usd_spent=0.00005))),
    ]

    assert deltas == [
        Delta(reasoning="Let me "),
        Delta(reasoning="think."),
        Delta(content="Hello"),
        Delta(content=" world"),
        None,
        None,
    ]
    assert (answer.content, answer.reasoning, answer.finish_reason, answer.model) == (
        "Hello world",
        "Let me think.",
        "stop",
        "glm-5",
    )
    assert answer.usage == Usage(prompt_tokens=5, completion_tokens=4, credits_used=100, usd_spent=0.00005)


def test_usage_merge_keeps_known_values_the_newer_chunk_does_not_repeat() -> None:
    older = Usage(prompt_tokens=5, credits_used=10)

    assert older.merged(Usage(prompt_tokens=6)) == Usage(prompt_tokens=6, credits_used=10)


def test_data_over_several_lines_is_one_event_joined_with_newlines() -> None:
    pretty = json.dumps(chunk({"content": "Hello\nthere"}), indent=2).split("\n")
    lines = [f"data: {line}" for line in pretty] + ["", "data: [DONE]", ""]

    assert list(iter_events(lines)) == [ChunkEvent(content="Hello\nthere", model="glm-5"), DoneEvent()]


def test_data_split_over_lines_that_never_parses_is_dropped_without_losing_the_next_event() -> None:
    lines = ["data: {half of", "data:  an object", data(chunk({"content": "Next."})), "", "data: [DONE]"]

    assert list(iter_events(lines)) == [ChunkEvent(content="Next.", model="glm-5"), DoneEvent()]


def test_multi_line_data_is_passed_on_as_soon_as_it_is_whole() -> None:
    decoder = SseDecoder()
    choices = json.dumps(chunk({"content": "Now."})["choices"])

    assert decoder.feed("data: {") is None
    assert decoder.feed(f'data:  "choices": {choices}') is None
    assert decoder.feed("data: }") == ChunkEvent(content="Now.")
    assert decoder.feed("data: {cut off by the end of the body") is None
    assert decoder.end() is None


def test_data_that_never_forms_an_event_is_dropped_once_it_passes_the_bound() -> None:
    decoder = SseDecoder()
    piece = "data: " + "x" * 100_000
    for _ in range(MAX_EVENT_CHARS // 100_000 + 1):
        assert decoder.feed(piece) is None
    assert decoder._waiting <= MAX_EVENT_CHARS  # bounded: the junk was let go
    # ...and the next whole chunk still comes through.
    assert decoder.feed(data({"choices": [{"delta": {"content": "ok"}}]})) == ChunkEvent(content="ok")
