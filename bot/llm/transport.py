"""The HTTP transport under the client's httpx API: aiohttp's, which costs about half of httpx's own
per streamed chunk (/work/shared/reference/performance.md; bench (c): CPU per reply 0.069 -> 0.051 s).

httpx stays the API the client is written against (requests, responses, timeouts, errors); only the
connection handling below it is aiohttp's, through `httpx-aiohttp`. aiohttp is already here for
slack-sdk and the web server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from httpx_aiohttp import AiohttpTransport

# Hundreds of concurrent streams are the normal load; aiohttp caps a pool at 100 connections unless
# told 0 (no cap), and httpx's None ("no cap") would leave aiohttp's default in place.
_NO_CONNECTION_CAP = 0


class _Transport(AiohttpTransport):
    """httpx-aiohttp 0.2 turns every aiohttp connection error into `httpx.ConnectTimeout`, a refused
    connection and a connection dropped mid-body too; those are put back as httpx says them
    (`ConnectError`, `ReadError`), so only a real timeout reads as one (bot.llm.transport_errors)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx.ConnectTimeout as exc:
            raise _unless_timeout(exc, httpx.ConnectError) from exc.__cause__
        response.stream = _Body(response.stream)
        return response


class _Body(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream | httpx.SyncByteStream) -> None:
        assert isinstance(inner, httpx.AsyncByteStream)
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx.ConnectTimeout as exc:
            raise _unless_timeout(exc, httpx.ReadError) from exc.__cause__

    async def aclose(self) -> None:
        await self._inner.aclose()


def _unless_timeout(exc: httpx.ConnectTimeout, error: type[httpx.TransportError]) -> httpx.TransportError:
    return exc if isinstance(exc.__cause__, TimeoutError) else error(str(exc))


def aiohttp_transport(*, keepalive: int = 100) -> httpx.AsyncBaseTransport:
    """An httpx transport that sends through one aiohttp session (created on the first request, in
    the running loop), with no cap on concurrent connections."""
    return _Transport(
        limits=httpx.Limits(max_connections=_NO_CONNECTION_CAP, max_keepalive_connections=keepalive)
    )
