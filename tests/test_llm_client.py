"""The AI/ML API client against a fake API over real loopback HTTP: streaming, retries, failures."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bot.llm import (
    BadRequestError,
    ChatMessage,
    CompletionResult,
    ConfigurationError,
    Delta,
    LLMError,
    LLMTimeoutError,
    OutOfCreditsError,
    RateLimitedError,
    StreamInterruptedError,
    UnavailableError,
    Usage,
)
from bot.llm.client import READ_PACE, AimlClient
from tests.fakes.aimlapi import ErrorReply, FakeAimlApi, Reply

KEY = "test-key-0123456789"
MESSAGES = [ChatMessage("system", "You are helpful."), ChatMessage("user", "Say hello.")]


@pytest.fixture
async def fake() -> AsyncIterator[FakeAimlApi]:
    async with FakeAimlApi(api_key=KEY) as server:
        yield server


def make_client(fake: FakeAimlApi, **overrides: Any) -> AimlClient:
    options: dict[str, Any] = {
        "api_key": KEY,
        "base_url": fake.base_url,
        "model": "zhipu/glm-5",
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
        "total_timeout": 5.0,
        "max_retries": 3,
        "backoff_base": 0.01,
        "backoff_max": 1.0,
    }
    return AimlClient(**(options | overrides))


@pytest.fixture
async def client(fake: FakeAimlApi) -> AsyncIterator[AimlClient]:
    async with make_client(fake) as aiml:
        yield aiml


async def complete(client: AimlClient, **kwargs: Any) -> tuple[list[Delta], CompletionResult]:
    deltas: list[Delta] = []
    async with client.stream_chat(MESSAGES, **kwargs) as stream:
        async for delta in stream:
            deltas.append(delta)
    return deltas, stream.result()


async def complete_until_error(
    client: AimlClient, **kwargs: Any
) -> tuple[list[Delta], CompletionResult, LLMError]:
    """Stream until the client raises; what was yielded, the result so far, and the error."""
    deltas: list[Delta] = []
    stream = client.stream_chat(MESSAGES, **kwargs)
    try:
        async with stream:
            async for delta in stream:
                deltas.append(delta)
    except LLMError as error:
        return deltas, stream.result(), error
    raise AssertionError(f"the stream ended without an error: {stream.result()}")


async def test_reasoning_then_content_arrive_in_order_and_the_result_has_usage_cost_and_ids(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(
        Reply(
            reasoning="Let me think.",
            content="Hello world",
            ttft=0.05,
            prompt_tokens=14,
            cached_tokens=3,
            credits_used=11136,
        )
    )

    deltas, result = await complete(client, max_tokens=256, request_id="T1:C1:1700000000.000100")

    reasoning_deltas = [d for d in deltas if d.reasoning]
    assert deltas[: len(reasoning_deltas)] == reasoning_deltas  # all thinking comes before the answer
    assert all(d.content or d.reasoning for d in deltas)
    assert "".join(d.reasoning for d in deltas) == result.reasoning == "Let me think."
    assert "".join(d.content for d in deltas) == result.content == "Hello world"
    assert result.finish_reason == "stop"
    assert result.usage == Usage(
        prompt_tokens=14,
        completion_tokens=7,  # the fake's token a piece: 4 pieces of 4 characters of thinking, 3 of answer
        cached_tokens=3,
        reasoning_tokens=4,
        credits_used=11136,
        usd_spent=0.005568,
    )
    assert result.model == "glm-5"
    [request] = fake.chat_requests
    assert result.inference_id == request.inference_id
    assert result.client_request_id == "T1:C1:1700000000.000100"
    assert result.ttft_ms is not None
    assert 50 <= result.ttft_ms <= result.duration_ms
    assert request.json == {
        "model": "zhipu/glm-5",
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Say hello."},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 256,
    }
    assert request.headers["Authorization"] == f"Bearer {KEY}"


async def test_chunks_that_arrived_together_come_as_one_delta_with_thinking_still_before_the_answer(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(Reply(reasoning="r" * 20, content="c" * 30, chunk_size=1))

    deltas: list[Delta] = []
    async with client.stream_chat(MESSAGES) as stream:
        async for delta in stream:
            if not deltas:
                await asyncio.sleep(0.3)  # a busy consumer: the rest of the stream waits in the socket
            deltas.append(delta)

    assert len(deltas) <= 5  # 50 pieces, read in a few reads
    kinds = [("r" if d.reasoning else "") + ("c" if d.content else "") for d in deltas]
    assert kinds == sorted(kinds, key=lambda k: k == "c") and "rc" not in kinds
    assert "".join(d.reasoning for d in deltas) == stream.result().reasoning == "r" * 20
    assert "".join(d.content for d in deltas) == stream.result().content == "c" * 30


async def test_a_fast_stream_is_read_a_few_times_a_second_not_per_chunk(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(Reply(content="c" * 40, chunk_size=1, ttft=0.05, chunk_interval=0.01))

    began = time.monotonic()
    firsts: list[float] = []
    deltas: list[Delta] = []
    async with client.stream_chat(MESSAGES) as stream:
        async for delta in stream:
            firsts.append(time.monotonic() - began)
            deltas.append(delta)

    assert "".join(d.content for d in deltas) == "c" * 40
    assert len(deltas) <= 10  # 40 chunks over 0.4 s, read every READ_PACE (0.1 s)
    assert firsts[0] < 0.05 + READ_PACE  # the first text is passed on as it comes


async def test_keepalives_blank_lines_and_empty_choices_chunks_do_not_disturb_the_answer(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(Reply(content="Steady answer.", keepalives=True, empty_choices_chunk=True))

    _, result = await complete(client)

    assert (result.content, result.finish_reason, result.usage.credits_used) == (
        "Steady answer.",
        "stop",
        1234,
    )


async def test_garbage_lines_in_the_stream_are_skipped(fake: FakeAimlApi, client: AimlClient) -> None:
    fake.enqueue(Reply(reasoning="Hmm.", content="Still fine.", garbage_lines=True))

    _, result = await complete(client)

    assert (result.reasoning, result.content, result.finish_reason) == ("Hmm.", "Still fine.", "stop")


async def test_a_reasoning_only_answer_has_empty_content(fake: FakeAimlApi, client: AimlClient) -> None:
    fake.enqueue(Reply(content="", reasoning="thinking hard " * 5, finish_reason="length"))

    deltas, result = await complete(client)

    assert all(d.content == "" for d in deltas)
    assert (result.content, result.reasoning, result.finish_reason) == ("", "thinking hard " * 5, "length")
    assert result.ttft_ms is not None  # a reasoning token is a first token


async def test_an_answer_cut_at_the_length_limit_says_so(fake: FakeAimlApi, client: AimlClient) -> None:
    fake.enqueue(Reply(content="The first part of a long answer", chunk_size=5))

    _, result = await complete(client, max_tokens=3)

    assert (result.content, result.finish_reason) == ("The first part ", "length")
    assert result.usage.completion_tokens == 3


async def test_a_stream_without_the_usage_chunk_leaves_usage_unknown(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(Reply(content="No bill yet.", usage=False))

    _, result = await complete(client)

    assert result.content == "No bill yet."
    assert result.usage == Usage()


WIRE_ANSWER = "Grüße from 世界: naïve café ✓, then plain ASCII to the end."


async def test_crlf_line_endings_give_the_same_answer_and_usage(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(Reply(reasoning="Hmm, let me see.", content=WIRE_ANSWER, crlf=True, keepalives=True))

    _, result = await complete(client)

    assert (result.reasoning, result.content) == ("Hmm, let me see.", WIRE_ANSWER)
    assert (result.finish_reason, result.usage.credits_used) == ("stop", 1234)


async def test_events_split_across_tcp_writes_are_put_back_together(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    # Cuts fall inside JSON strings, inside multi-byte characters and between a CR and its LF.
    fake.enqueue(Reply(content=WIRE_ANSWER, chunk_size=7, writes_per_event=5, crlf=True))

    deltas, result = await complete(client)

    assert "".join(d.content for d in deltas) == result.content == WIRE_ANSWER  # none lost or split
    events = len(range(0, len(WIRE_ANSWER), 7))
    assert (result.finish_reason, result.usage.completion_tokens) == ("stop", events)


async def test_a_chunk_spread_over_several_data_lines_is_one_event(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(Reply(reasoning="Think.", content=WIRE_ANSWER, multiline_data=True, prompt_tokens=14))

    _, result = await complete(client)

    assert (result.reasoning, result.content, result.finish_reason) == ("Think.", WIRE_ANSWER, "stop")
    assert (result.usage.prompt_tokens, result.usage.credits_used) == (14, 1234)


async def test_response_headers_that_come_late_still_start_the_stream(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(Reply(content="Worth the wait.", header_delay=1.0))  # under the 2 s read timeout

    _, result = await complete(client)

    assert result.content == "Worth the wait."
    assert len(fake.chat_requests) == 1, "not retried"
    assert result.ttft_ms is not None and result.ttft_ms >= 1000


async def test_a_max_tokens_above_the_models_output_limit_is_a_bad_request_and_not_retried(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    _, result, error = await complete_until_error(client, max_tokens=fake.max_output_tokens + 1)

    assert isinstance(error, BadRequestError)
    assert len(fake.chat_requests) == 1
    assert result.content == ""


async def test_an_invalid_key_is_a_configuration_error_and_is_not_retried(
    fake: FakeAimlApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with make_client(fake, api_key="wrong-key-secret") as client:
        deltas, result, error = await complete_until_error(client)

    assert isinstance(error, ConfigurationError)
    assert (error.status, error.kind) == (401, "auth")
    assert "This request requires a valid API key" in str(error)
    assert "admin" in error.user_message
    assert (deltas, result.content) == ([], "")
    assert len(fake.chat_requests) == 1
    assert "wrong-key-secret" not in caplog.text


async def test_out_of_credits_is_a_billing_error_and_is_not_retried(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(ErrorReply(status=403))

    _, _, error = await complete_until_error(client)

    assert isinstance(error, OutOfCreditsError)
    assert "run out of credits" in str(error)
    assert error.kind == "credits"
    assert len(fake.chat_requests) == 1


async def test_rate_limit_waits_the_retry_after_the_api_asks_for(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(ErrorReply(status=429, retry_after=0.2), Reply(content="After the wait."))

    _, result = await complete(client)

    first, second = fake.chat_requests
    assert result.content == "After the wait."
    assert 0.2 <= second.received_at - first.received_at < 1.0  # not the 0.01 s backoff_base


async def test_rate_limit_without_retry_after_is_retried_with_backoff(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(ErrorReply(status=429), ErrorReply(status=429), Reply(content="Third time lucky."))

    _, result = await complete(client)

    assert result.content == "Third time lucky."
    assert len(fake.chat_requests) == 3


async def test_a_retry_after_longer_than_the_backoff_cap_fails_at_once(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(
        ErrorReply(status=429, message="You've reached the free limit for the hour", retry_after=3600)
    )

    _, _, error = await complete_until_error(client)

    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 3600
    assert len(fake.chat_requests) == 1


async def test_a_server_error_is_retried_and_the_answer_still_arrives(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(ErrorReply(status=500), Reply(content="Recovered."))

    _, result = await complete(client)

    assert result.content == "Recovered."
    assert len(fake.chat_requests) == 2
    assert result.inference_id == fake.chat_requests[1].inference_id


async def test_an_unavailable_model_fails_after_all_retries(fake: FakeAimlApi) -> None:
    fake.default = ErrorReply(status=503)

    async with make_client(fake, max_retries=2) as client:
        _, _, error = await complete_until_error(client)

    assert isinstance(error, UnavailableError)
    assert "Service unavailable" in str(error)
    assert error.attempts == 3
    assert len(fake.chat_requests) == 3


async def test_persistent_rate_limiting_fails_after_all_retries(fake: FakeAimlApi) -> None:
    fake.default = ErrorReply(status=429)

    async with make_client(fake, max_retries=1) as client:
        _, _, error = await complete_until_error(client)

    assert isinstance(error, RateLimitedError)
    assert len(fake.chat_requests) == 2


async def test_a_disconnect_after_the_first_tokens_keeps_the_partial_answer_and_is_not_retried(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(Reply(content="one two three four", chunk_size=4, disconnect_after=2))

    deltas, result, error = await complete_until_error(client)

    assert isinstance(error, StreamInterruptedError)
    assert error.kind == "interrupted"
    assert "".join(d.content for d in deltas) == result.content == "one two "
    assert result.finish_reason is None
    assert result.usage == Usage()
    assert len(fake.chat_requests) == 1


async def test_a_disconnect_before_the_first_token_is_retried(fake: FakeAimlApi, client: AimlClient) -> None:
    fake.enqueue(Reply(content="lost", disconnect_after=0), Reply(content="Second try."))

    _, result = await complete(client)

    assert result.content == "Second try."
    assert len(fake.chat_requests) == 2


async def test_an_error_inside_the_stream_after_the_first_token_interrupts_it(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(Reply(content="half an answer", chunk_size=5, error_after=1))

    _, result, error = await complete_until_error(client)

    assert isinstance(error, StreamInterruptedError)
    assert "Internal server error" in str(error)
    assert result.content == "half "
    assert len(fake.chat_requests) == 1


async def test_an_error_inside_the_stream_before_the_first_token_is_retried(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(Reply(content="never", error_after=0), Reply(content="Fine now."))

    _, result = await complete(client)

    assert result.content == "Fine now."


async def test_a_stalled_stream_times_out_and_keeps_the_partial_answer(fake: FakeAimlApi) -> None:
    fake.enqueue(Reply(content="slow and then nothing", chunk_size=5, stall_after=2))

    async with make_client(fake, read_timeout=0.2) as client:
        started = time.monotonic()
        _, result, error = await complete_until_error(client)

    assert isinstance(error, LLMTimeoutError)
    assert error.kind == "timeout"
    assert 0.2 <= time.monotonic() - started < 1.5
    assert result.content == "slow and t"
    assert len(fake.chat_requests) == 1


async def test_a_model_silent_before_its_first_token_times_out_without_retrying(fake: FakeAimlApi) -> None:
    fake.enqueue(Reply(content="too late", ttft=1.0))

    async with make_client(fake, read_timeout=0.2) as client:
        _, result, error = await complete_until_error(client)

    assert isinstance(error, LLMTimeoutError)
    assert result.ttft_ms is None
    assert len(fake.chat_requests) == 1


async def test_the_overall_deadline_ends_a_stream_that_keeps_trickling(fake: FakeAimlApi) -> None:
    fake.enqueue(Reply(content="word " * 100, chunk_size=5, chunk_interval=0.05))

    async with make_client(fake, total_timeout=0.3) as client:
        started = time.monotonic()
        _, result, error = await complete_until_error(client)

    assert isinstance(error, LLMTimeoutError)
    assert 0.3 <= time.monotonic() - started < 1.5
    assert result.content.startswith("word word ")
    assert result.duration_ms >= 300


async def test_the_deadline_holds_when_it_is_many_read_timeouts_away(fake: FakeAimlApi) -> None:
    # Far from the deadline only httpx's per-read timeout guards a read; near it, the deadline does.
    fake.enqueue(Reply(content="word " * 100, chunk_size=5, chunk_interval=0.05))

    async with make_client(fake, read_timeout=0.2, total_timeout=0.8) as client:
        started = time.monotonic()
        _, result, error = await complete_until_error(client)

    assert isinstance(error, LLMTimeoutError)
    assert 0.8 <= time.monotonic() - started < 1.5
    assert result.content.startswith("word " * 10)


@pytest.mark.parametrize("shape", ["aimlapi", "openai"])
async def test_both_error_body_shapes_give_the_upstream_message(
    fake: FakeAimlApi, client: AimlClient, shape: Any
) -> None:
    fake.enqueue(ErrorReply(status=400, message="max_tokens must be at most 131072", shape=shape))

    _, _, error = await complete_until_error(client)

    assert isinstance(error, BadRequestError)
    assert "max_tokens must be at most 131072" in str(error)
    assert len(fake.chat_requests) == 1


async def test_openai_style_insufficient_quota_is_out_of_credits(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(
        ErrorReply(status=429, message="You exceeded your quota", shape="openai", code="insufficient_quota")
    )

    _, _, error = await complete_until_error(client)

    assert isinstance(error, OutOfCreditsError)
    assert len(fake.chat_requests) == 1


async def test_the_client_request_id_is_sent_and_kept_across_retries(
    fake: FakeAimlApi, client: AimlClient
) -> None:
    fake.enqueue(ErrorReply(status=502), Reply(content="ok"))

    _, result = await complete(client, request_id="turn-42")

    assert [r.headers["X-Client-Request-Id"] for r in fake.chat_requests] == ["turn-42", "turn-42"]
    assert result.client_request_id == "turn-42"


async def test_a_request_id_is_generated_when_none_is_given(fake: FakeAimlApi, client: AimlClient) -> None:
    first = client.stream_chat(MESSAGES)
    second = client.stream_chat(MESSAGES)
    async with first:
        async for _ in first:
            pass

    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", first.request_id)
    assert first.request_id != second.request_id
    assert fake.chat_requests[0].headers["X-Client-Request-Id"] == first.request_id


def test_a_request_id_the_api_would_reject_is_refused_before_sending(client: AimlClient) -> None:
    with pytest.raises(ValueError, match="request_id"):
        client.stream_chat(MESSAGES, request_id="has spaces/and slashes")


async def test_cancelling_the_consumer_closes_the_connection(fake: FakeAimlApi, client: AimlClient) -> None:
    fake.enqueue(Reply(content="word " * 200, chunk_size=5, chunk_interval=0.02))
    first_delta = asyncio.Event()
    stream = client.stream_chat(MESSAGES)

    async def consume() -> None:
        async with stream:
            async for _ in stream:
                first_delta.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_delta.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    [request] = fake.chat_requests
    await asyncio.wait_for(request.done.wait(), 2)
    assert request.client_disconnected
    assert stream.result().content.startswith("word ")
    assert stream.result().finish_reason is None


async def test_consecutive_answers_reuse_one_connection(fake: FakeAimlApi, client: AimlClient) -> None:
    for _ in range(3):
        await complete(client)

    assert len({r.client_port for r in fake.chat_requests}) == 1


async def test_an_unreachable_api_is_unavailable_after_retries() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    async with AimlClient(api_key=KEY, base_url=url, model="m", max_retries=1, backoff_base=0.01) as client:
        _, _, error = await complete_until_error(client)

    assert isinstance(error, UnavailableError)
    assert error.attempts == 2


async def test_a_server_that_ignores_stream_true_still_gives_an_answer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Accept"] == "text/event-stream"
        return httpx.Response(
            200,
            json={
                "model": "glm-5",
                "choices": [{"index": 0, "message": {"content": "Whole answer."}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            },
        )

    transport = httpx.MockTransport(handler)
    async with AimlClient(
        api_key=KEY, base_url="https://api.example/v1", model="m", transport=transport
    ) as client:
        _, result = await complete(client)

    assert (result.content, result.finish_reason) == ("Whole answer.", "stop")
    assert result.usage == Usage(prompt_tokens=3, completion_tokens=2)


async def test_balance_is_read_in_usd(fake: FakeAimlApi, client: AimlClient) -> None:
    fake.balance = 42.5

    assert await client.fetch_balance() == 42.5
    assert fake.requests[-1].path == "/v2/billing"


async def test_balance_failures_raise_the_matching_error(fake: FakeAimlApi, client: AimlClient) -> None:
    fake.balance = ErrorReply(status=500)
    with pytest.raises(UnavailableError):
        await client.fetch_balance()

    async with make_client(fake, api_key="wrong") as wrong:
        with pytest.raises(ConfigurationError):
            await wrong.fetch_balance()


def test_a_base_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="base_url"):
        AimlClient(api_key=KEY, base_url="api.aimlapi.com/v1", model="m")
