"""Errors of the AI/ML API client; HTTP statuses and error bodies become these here (httpx-free, so the
domain can catch them without the transport; bot/llm/transport_errors.py translates httpx's).

    LLMError                      .kind (metrics label), .user_message (shown in Slack), .status
     ├── ConfigurationError       401 invalid key, 403 not allowed, 404 unknown model or endpoint
     ├── OutOfCreditsError        403 "run out of credits" (also 402, OpenAI's insufficient_quota)
     ├── BadRequestError          400, 413, 422 and other 4xx
     ├── RateLimitedError         429 once the retries ran out
     ├── UnavailableError         5xx or connection failures once the retries ran out
     ├── LLMTimeoutError          connect timeout, per-chunk read timeout or the overall deadline
     └── StreamInterruptedError   the stream broke after the first token (the partial answer is kept)

`str(exc)` carries the upstream message (for logs); `user_message` is the deliberate human note.
`retry_delay` is the backoff policy for the retryable ones.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

_MAX_MESSAGE_CHARS = 500
_CREDITS = re.compile(r"credit|top up|balance|insufficient.quota|billing", re.IGNORECASE)


class LLMError(Exception):
    """Base of every error the client raises; `retryable` says a plain new attempt may succeed."""

    kind: ClassVar[str] = "error"
    default_user_message: ClassVar[str] = "The model could not answer because of an unexpected error."

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        user_message: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        upstream_request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.user_message = user_message or self.default_user_message
        self.retryable = retryable
        self.retry_after = retry_after
        self.upstream_request_id = upstream_request_id
        self.attempts = 1  # set by the client to the number of HTTP attempts made


class ConfigurationError(LLMError):
    kind = "auth"
    default_user_message = "The bot's AI/ML API key or model setting is not valid; an admin needs to fix it."


class OutOfCreditsError(LLMError):
    kind = "credits"
    default_user_message = "The bot's AI/ML API account is out of credits; an admin needs to top it up."


class BadRequestError(LLMError):
    kind = "bad_request"
    default_user_message = "The model rejected this request (the conversation may be too long)."


class RateLimitedError(LLMError):
    kind = "rate_limited"
    default_user_message = "The model is getting too many requests right now; please try again in a minute."


class UnavailableError(LLMError):
    kind = "unavailable"
    default_user_message = "The model is unavailable right now; please try again later."


class LLMTimeoutError(LLMError):
    kind = "timeout"
    default_user_message = "The model took too long to answer; please try again."


class StreamInterruptedError(LLMError):
    kind = "interrupted"
    default_user_message = "The answer was cut off by a connection problem."


@dataclass(frozen=True)
class ErrorBody:
    """The useful parts of an upstream error body, whichever shape it came in."""

    message: str | None = None
    code: str | None = None
    request_id: str | None = None


def parse_error_body(body: bytes | str) -> ErrorBody:
    """Read AI/ML's `{"message", "requestId", ...}` or OpenAI's `{"error": {"message", "code"}}`."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data: Any = json.loads(text)
    except ValueError:
        snippet = " ".join(text.split())
        return ErrorBody(message=snippet[:_MAX_MESSAGE_CHARS] or None)
    if not isinstance(data, dict):
        return ErrorBody()
    nested = data.get("error")
    source: dict[str, Any] = nested if isinstance(nested, dict) else data
    message = source.get("message")
    if isinstance(nested, str) and not isinstance(message, str):
        message = nested  # {"error": "text"} from some proxies
    if isinstance(message, list):  # validation errors sometimes come as a list of strings
        message = "; ".join(str(item) for item in message)
    code = source.get("code") or source.get("type")
    request_id = data.get("requestId") or source.get("request_id")
    return ErrorBody(
        message=str(message)[:_MAX_MESSAGE_CHARS] if message else None,
        code=str(code) if code is not None else None,
        request_id=str(request_id) if request_id else None,
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if seconds == seconds else None  # NaN is not a delay


def retry_delay(error: LLMError, attempt: int, *, base: float, cap: float) -> float | None:
    """Seconds to wait after failed attempt `attempt` (1-based), or None if retrying is pointless.

    Jittered exponential backoff, or the `Retry-After` the API asked for (plus up to 10% jitter so
    many streams do not retry in lockstep); a `Retry-After` longer than `cap` gives up at once.
    """
    if not error.retryable:
        return None
    if error.retry_after is not None:
        wait = error.retry_after
        return None if wait > cap else wait + random.uniform(0, wait * 0.1)
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def error_for_status(
    status: int, body: bytes | str, headers: Mapping[str, str] | None = None, *, secret: str | None = None
) -> LLMError:
    """The error for a non-2xx upstream response; `secret` is scrubbed from the message."""
    parsed = parse_error_body(body)
    upstream = parsed.message or f"HTTP {status} with no message"
    if secret:
        upstream = upstream.replace(secret, "***")
    message = f"AI/ML API HTTP {status}: {upstream}"
    headers = headers or {}
    request_id = parsed.request_id or headers.get("x-request-id")
    about_credits = bool(_CREDITS.search(f"{upstream} {parsed.code or ''}"))
    kwargs: dict[str, Any] = {"status": status, "upstream_request_id": request_id}
    if status == 402 or (status in (403, 429) and about_credits):
        return OutOfCreditsError(message, **kwargs)
    if status in (401, 403, 404):
        return ConfigurationError(message, **kwargs)
    if status == 429:
        retry_after = parse_retry_after(headers.get("retry-after"))
        return RateLimitedError(message, retryable=True, retry_after=retry_after, **kwargs)
    if status == 408 or status >= 500:
        retry_after = parse_retry_after(headers.get("retry-after"))
        return UnavailableError(message, retryable=True, retry_after=retry_after, **kwargs)
    return BadRequestError(message, **kwargs)


def error_for_stream_event(
    body: str, status: int | None, *, after_first_token: bool, secret: str | None = None
) -> LLMError:
    """The error for an error object sent inside a 200 stream (no usable status: treated as 502)."""
    error = error_for_status(status if status is not None and status >= 400 else 502, body, secret=secret)
    if after_first_token:
        return StreamInterruptedError(
            f"error inside the stream after the first token: {error}", status=error.status
        )
    return error


def error_for_early_end(*, after_first_token: bool) -> LLMError:
    """The error for a 200 stream that ended with neither `[DONE]` nor a finish reason."""
    if after_first_token:
        return StreamInterruptedError("the AI/ML API closed the stream before the answer was complete")
    return UnavailableError("the AI/ML API closed the stream without an answer", retryable=True)
