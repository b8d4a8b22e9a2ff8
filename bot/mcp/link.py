"""One MCP server kept connected in the background: connect, list tools, watch, reconnect with backoff.

Each connection attempt runs in a task of its own, because the SDK's transports hold anyio task groups
that must be entered and left in one task; closing means letting that task leave its `async with`
(a stdio server gets its stdin closed, then SIGTERM, then SIGKILL: no zombie), cancelling it only
when it will not. Calls come from other tasks (the tool loop) and only send requests on the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, Implementation
from mcp.types import Tool as McpToolInfo

from bot.mcp.config import HttpTarget, LinkTiming, McpServer

log = logging.getLogger(__name__)

CLIENT_INFO = Implementation(name="glm-slack-bot", version="0.1.0")
_MAX_TOOL_PAGES = 20  # a server that pages forever cannot hold a connection attempt
_STOP_WAIT = 8.0  # stdio shutdown takes up to about 6 s (stdin close, SIGTERM, SIGKILL) before a cancel


class ServerUnavailable(Exception):
    """The server is not connected now; its tools are left out until it is back."""


class ServerLink:
    """Keeps one server connected; `tools` and `up` describe it now, `call` runs a tool on it."""

    def __init__(
        self,
        server: McpServer,
        timing: LinkTiming,
        on_change: Callable[[ServerLink], None] = lambda _link: None,
    ) -> None:
        self.server = server
        self._timing = timing
        self._on_change = on_change
        self._client: Client | None = None
        self.tools: tuple[McpToolInfo, ...] = ()
        self.connects = 0  # connections made so far
        self.failures = 0  # attempts that failed and connections that broke
        self._stopping = asyncio.Event()
        self._check_now = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.server.name

    @property
    def up(self) -> bool:
        return self._client is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"mcp-link-{self.name}")

    async def aclose(self) -> None:
        self._stopping.set()
        if self._task is None:
            return
        done, _ = await asyncio.wait([self._task], timeout=_STOP_WAIT + 2)
        if not done:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=_STOP_WAIT)

    def check_soon(self) -> None:
        """A call failed in a way that suggests the connection broke: check it now, not at the interval."""
        self._check_now.set()

    async def call(self, tool: str, arguments: dict[str, Any], seconds: float) -> CallToolResult:
        """Run `tool`; raises ServerUnavailable, TimeoutError, or the SDK's errors (MCPError, transport)."""
        client = self._client
        if client is None:
            raise ServerUnavailable(self.name)
        async with asyncio.timeout(seconds):
            return await client.call_tool(tool, arguments, read_timeout_seconds=seconds)

    async def _supervise(self) -> None:
        delay = self._timing.retry_min
        while not self._stopping.is_set():
            ready = asyncio.Event()
            attempt = asyncio.create_task(self._connection(ready), name=f"mcp-connection-{self.name}")
            reason = await self._wait_connected(attempt, ready)
            if reason is None:
                delay = self._timing.retry_min
                reason = await self._wait_closed(attempt)
            if self._stopping.is_set():
                break
            self.failures += 1
            log.warning(
                "MCP server %s is unavailable (%s); retrying in %.1f s",
                self.name,
                reason,
                delay,
                extra={"mcp_server": self.name, "target": self.server.target.describe()},
            )
            # Jitter keeps replicas (and servers restarted together) from reconnecting in lockstep.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self._timing.retry_max)

    async def _wait_connected(self, attempt: asyncio.Task[None], ready: asyncio.Event) -> str | None:
        """None once the attempt is connected; else why not (it has ended by then)."""
        waiter = asyncio.create_task(ready.wait())
        stop = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait(
                [attempt, waiter, stop], timeout=self._timing.connect, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
            stop.cancel()
        if ready.is_set() and not attempt.done():
            return None
        if not attempt.done():
            attempt.cancel()
            await asyncio.wait([attempt], timeout=_STOP_WAIT)
            return "stopping" if self._stopping.is_set() else f"no answer within {self._timing.connect:g} s"
        return _failure(attempt)

    async def _wait_closed(self, attempt: asyncio.Task[None]) -> str:
        """Wait for a connected attempt to end (health check failed, or we stop); why it ended."""
        await asyncio.wait([attempt])
        return _failure(attempt)

    async def _connection(self, ready: asyncio.Event) -> None:
        try:
            async with _open(self.server, self._timing) as client:
                self.tools = await _list_tools(client)
                self._client = client
                self.connects += 1
                ready.set()
                log.info(
                    "MCP server %s connected: %d tools",
                    self.name,
                    len(self.tools),
                    extra={"mcp_server": self.name, "target": self.server.target.describe()},
                )
                self._on_change(self)
                try:
                    await self._watch(client)
                finally:
                    self._client = None
                    self._on_change(self)
        finally:
            self._client = None

    async def _watch(self, client: Client) -> None:
        """Until stopping: list the tools every health interval (a liveness check that also keeps them
        fresh); an error or a missing answer ends the connection."""
        while not self._stopping.is_set():
            self._check_now.clear()
            sleepers = [
                asyncio.create_task(self._stopping.wait()),
                asyncio.create_task(self._check_now.wait()),
            ]
            try:
                await asyncio.wait(
                    sleepers, timeout=self._timing.health_interval, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for sleeper in sleepers:
                    sleeper.cancel()
            if self._stopping.is_set():
                return
            async with asyncio.timeout(self._timing.connect):
                tools = await _list_tools(client)
            if tools != self.tools:
                self.tools = tools
                self._on_change(self)


@asynccontextmanager
async def _open(server: McpServer, timing: LinkTiming) -> AsyncIterator[Client]:
    target = server.target
    if isinstance(target, HttpTarget):
        http = httpx2.AsyncClient(
            headers=dict(target.headers),
            timeout=httpx2.Timeout(timing.connect, read=None),  # calls bound their own time
            follow_redirects=False,  # the SDK follows same-origin redirects itself
        )
        async with http:
            transport = streamable_http_client(target.url, http_client=http)
            async with Client(transport, client_info=CLIENT_INFO, cache=None) as client:
                yield client
    else:
        params = StdioServerParameters(
            command=target.command, args=list(target.args), env=dict(target.env) or None, cwd=target.cwd
        )
        async with Client(params, client_info=CLIENT_INFO, cache=None) as client:
            yield client


async def _list_tools(client: Client) -> tuple[McpToolInfo, ...]:
    tools: list[McpToolInfo] = []
    cursor: str | None = None
    for _ in range(_MAX_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tuple(tools)


def _failure(attempt: asyncio.Task[None]) -> str:
    if attempt.cancelled():
        return "cancelled"
    exc = attempt.exception()
    if exc is None:
        return "closed"
    return _reason(exc)


def _reason(exc: BaseException) -> str:
    """One short line for the log: the innermost cause, without a traceback (anyio wraps in groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
