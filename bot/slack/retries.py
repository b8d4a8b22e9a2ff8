"""Which slack_sdk retry handlers a caller runs with: 429s waited out by slack_sdk, or seen by us."""

from __future__ import annotations

import copy

from slack_sdk.http_retry.async_handler import RetryState
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.web.async_client import AsyncWebClient


class ShortRateLimitRetries(AsyncRateLimitErrorRetryHandler):
    """slack_sdk's 429 handler, but only for a `Retry-After` of at most `max_wait` seconds: a longer
    one is the caller's to report or work around."""

    def __init__(self, max_retry_count: int, max_wait: float) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    async def _can_retry_async(
        self,
        *,
        state: RetryState,  # noqa: ARG002 - the handler interface's keywords
        request: HttpRequest,  # noqa: ARG002
        response: HttpResponse | None = None,
        error: Exception | None = None,  # noqa: ARG002
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        retry_after = next((v for k, v in response.headers.items() if k.lower() == "retry-after"), ["1"])
        try:
            return float(retry_after[0]) <= self.max_wait
        except (ValueError, IndexError):
            return False


def without_rate_limit_retries(client: AsyncWebClient) -> AsyncWebClient:
    """The same client minus slack_sdk's 429 retry handler, so rate limits reach the edit budget."""
    kept = [h for h in client.retry_handlers if not isinstance(h, AsyncRateLimitErrorRetryHandler)]
    if len(kept) == len(client.retry_handlers):
        return client
    clone = copy.copy(client)
    clone.retry_handlers = kept
    return clone


def with_rate_limit_retries(
    client: AsyncWebClient, *, max_retries: int = 5, max_wait: float = 10.0
) -> AsyncWebClient:
    """The same client with a handler that sleeps a short `Retry-After` and retries the 429.

    For calls that may wait a little (the digest catching up several days into one channel meets
    chat.postMessage's one-a-second limit; a backfill paging a long thread meets Tier 3), never for
    streaming, whose budget must see every 429.
    """
    others = without_rate_limit_retries(client).retry_handlers
    clone = copy.copy(client)
    clone.retry_handlers = [*others, ShortRateLimitRetries(max_retries, max_wait)]
    return clone
