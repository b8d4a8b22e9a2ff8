"""httpx's exceptions, translated into the client's error tree at the transport edge."""

from __future__ import annotations

import httpx

from bot.llm.errors import (
    ConfigurationError,
    LLMError,
    LLMTimeoutError,
    StreamInterruptedError,
    UnavailableError,
)


def error_for_transport(exc: httpx.HTTPError) -> LLMError:
    """The error for an httpx failure before the first token (connection-level ones are retryable)."""
    detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, httpx.ReadTimeout):
        return LLMTimeoutError(f"no data from the AI/ML API within the read timeout ({detail})")
    if isinstance(exc, httpx.TimeoutException):  # connect, write or pool: nothing was generated yet
        return LLMTimeoutError(f"could not reach the AI/ML API in time ({detail})", retryable=True)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return ConfigurationError(f"AI/ML API base URL is not usable ({detail})")
    if isinstance(exc, httpx.LocalProtocolError):
        return UnavailableError(f"could not send the request ({detail})")
    if isinstance(exc, httpx.TransportError | httpx.DecodingError):
        return UnavailableError(f"connection to the AI/ML API failed ({detail})", retryable=True)
    return UnavailableError(f"request to the AI/ML API failed ({detail})")


def error_for_read(exc: httpx.HTTPError, *, after_first_token: bool) -> LLMError:
    """The error for a failure while reading the body of a 200 stream."""
    if isinstance(exc, httpx.ReadTimeout):
        return LLMTimeoutError("the AI/ML API stream stalled: no data within the read timeout")
    if after_first_token:
        detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
        return StreamInterruptedError(f"the AI/ML API stream broke after the first token ({detail})")
    return error_for_transport(exc)
