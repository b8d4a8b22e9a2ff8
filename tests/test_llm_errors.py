"""Upstream error bodies and statuses become the right error, with a human note and the upstream text."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from bot.llm.errors import (
    BadRequestError,
    ConfigurationError,
    LLMError,
    LLMTimeoutError,
    OutOfCreditsError,
    RateLimitedError,
    UnavailableError,
    error_for_status,
    parse_error_body,
    parse_retry_after,
    retry_delay,
)
from bot.llm.transport_errors import error_for_transport


def aiml_body(status: int, message: str) -> bytes:
    return json.dumps(
        {
            "message": message,
            "path": "/v1/chat/completions",
            "requestId": "req-123",
            "statusCode": status,
            "timestamp": "2026-08-01T10:00:00.000Z",
        }
    ).encode()


def openai_body(message: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": code}}).encode()


def test_aiml_error_body_gives_message_and_request_id() -> None:
    parsed = parse_error_body(aiml_body(401, "This request requires a valid API key"))

    assert (parsed.message, parsed.request_id) == ("This request requires a valid API key", "req-123")


def test_openai_error_body_gives_message_and_code() -> None:
    parsed = parse_error_body(openai_body("You exceeded your current quota", "insufficient_quota"))

    assert (parsed.message, parsed.code) == ("You exceeded your current quota", "insufficient_quota")


def test_html_error_page_gives_a_short_one_line_message() -> None:
    parsed = parse_error_body(b"<html>\n<body>502 Bad Gateway</body>\n</html>" + b" " * 10_000 + b"x" * 1000)

    assert parsed.message is not None
    assert parsed.message.startswith("<html> <body>502 Bad Gateway</body> </html>")
    assert len(parsed.message) <= 500


def test_validation_errors_given_as_a_list_are_joined() -> None:
    assert parse_error_body(b'{"message": ["messages must be an array", "model is required"]}').message == (
        "messages must be an array; model is required"
    )


@pytest.mark.parametrize(
    ("status", "body", "error_type", "retryable"),
    [
        (401, aiml_body(401, "This request requires a valid API key"), ConfigurationError, False),
        (
            403,
            aiml_body(403, "You've run out of credits. Please top up your balance"),
            OutOfCreditsError,
            False,
        ),
        (403, aiml_body(403, "This model is not available for your plan"), ConfigurationError, False),
        (
            404,
            openai_body("The model `zhipu/glm-9` does not exist", "model_not_found"),
            ConfigurationError,
            False,
        ),
        (402, b"", OutOfCreditsError, False),
        (429, openai_body("You exceeded your current quota", "insufficient_quota"), OutOfCreditsError, False),
        (429, aiml_body(429, "Too Many Requests"), RateLimitedError, True),
        (400, aiml_body(400, "Body validation error"), BadRequestError, False),
        (413, b"", BadRequestError, False),
        (422, openai_body("max_tokens is too large"), BadRequestError, False),
        (500, aiml_body(500, "model is under maintenance"), UnavailableError, True),
        (502, b"<html>Bad Gateway</html>", UnavailableError, True),
        (503, aiml_body(503, "Service unavailable"), UnavailableError, True),
        (504, aiml_body(504, "Generation timeout"), UnavailableError, True),
    ],
)
def test_each_status_maps_to_its_error(
    status: int, body: bytes, error_type: type[LLMError], retryable: bool
) -> None:
    error = error_for_status(status, body)

    assert type(error) is error_type
    assert error.status == status
    assert error.retryable is retryable
    assert error.user_message == error_type.default_user_message
    assert str(error).startswith(f"AI/ML API HTTP {status}: ")


def test_error_text_keeps_the_upstream_message_but_never_the_key() -> None:
    error = error_for_status(
        401, openai_body("Incorrect API key provided: sk-secret-123"), secret="sk-secret-123"
    )

    assert "Incorrect API key provided" in str(error)
    assert "sk-secret-123" not in str(error)


def test_error_kinds_are_distinct_metric_labels() -> None:
    kinds = [cls.kind for cls in LLMError.__subclasses__()]

    assert sorted(kinds) == sorted(
        ["auth", "credits", "bad_request", "rate_limited", "unavailable", "timeout", "interrupted"]
    )


def test_retry_after_in_seconds_or_as_a_date() -> None:
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)

    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0.25 ") == 0.25
    assert 55 <= (parse_retry_after(in_a_minute) or 0) <= 60
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-5") == 0.0


def test_rate_limit_carries_the_retry_after_header() -> None:
    error = error_for_status(429, b"", {"retry-after": "3"})

    assert error.retry_after == 3.0


@pytest.mark.parametrize(
    ("exc", "error_type", "retryable"),
    [
        (httpx.ConnectError("refused"), UnavailableError, True),
        (httpx.ConnectTimeout("slow"), LLMTimeoutError, True),
        (httpx.ReadTimeout("silent"), LLMTimeoutError, False),
        (httpx.RemoteProtocolError("peer closed"), UnavailableError, True),
        (httpx.UnsupportedProtocol("ftp"), ConfigurationError, False),
    ],
)
def test_transport_failures_before_the_first_token(
    exc: httpx.HTTPError, error_type: type[LLMError], retryable: bool
) -> None:
    error = error_for_transport(exc)

    assert type(error) is error_type
    assert error.retryable is retryable


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    error = UnavailableError("503", retryable=True)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (10, 20.0)]:
        delays = [retry_delay(error, attempt, base=0.5, cap=20.0) for _ in range(50)]
        assert all(d is not None and ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


def test_backoff_honours_retry_after_and_gives_up_when_it_is_longer_than_the_cap() -> None:
    delay = retry_delay(RateLimitedError("429", retryable=True, retry_after=2.0), 1, base=0.5, cap=20.0)

    assert delay is not None
    assert 2.0 <= delay <= 2.2
    assert (
        retry_delay(RateLimitedError("429", retryable=True, retry_after=3600), 1, base=0.5, cap=20.0) is None
    )


def test_errors_that_are_not_retryable_get_no_delay() -> None:
    assert retry_delay(ConfigurationError("401"), 1, base=0.5, cap=20.0) is None
