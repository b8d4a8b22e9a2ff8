"""The tools of the configured MCP servers that are up now, namespaced by server, as a `ToolBox`.

`start_mcp` is what the composition root calls: it reads MCP_CONFIG_FILE (a mistake stops start-up
with one line), starts a background link per server (start-up never waits for a server) and exports
the servers' state as metrics. `aclose()` closes every session and stops every stdio subprocess.

The MCP SDK takes a second or more to import (it brings its server side along): this module leaves it
to bot.mcp.link and bot.mcp.tool, imported only when a server is configured.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from bot.conversation.tools import Tool, ToolContext, ToolSpec
from bot.mcp.config import LinkTiming, McpServer, load_mcp_config
from bot.metrics import Metrics
from bot.settings import Settings, process_environment

if TYPE_CHECKING:
    from bot.mcp.link import ServerLink
    from bot.mcp.tool import McpTool

log = logging.getLogger(__name__)

MAX_NAME = 64  # OpenAI-compatible function names: ^[a-zA-Z0-9_-]{1,64}$
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")
_MAX_DESCRIPTION = 4_000
_EMPTY_PARAMETERS: Mapping[str, Any] = {"type": "object", "properties": {}}


class McpEvents(Protocol):
    """Where calls are counted (bot.metrics.Metrics)."""

    def mcp_tool_call(self, server: str, outcome: str, seconds: float) -> None: ...


def tool_name(server: str, tool: str, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """`server__tool`, with characters a function name may not hold replaced by `_`; a short digest of
    the original name keeps it unique when it had to be cut to 64 characters or clashes with another."""
    name = f"{server}__{_NOT_IN_NAME.sub('_', tool)}"
    if len(name) <= MAX_NAME and name not in taken:
        return name
    digest = hashlib.sha256(f"{server}\0{tool}".encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9]}_{digest}"


class McpToolBox:
    """Tools of the servers that are up, rebuilt whenever a server connects, drops or changes its list."""

    def __init__(
        self,
        servers: Sequence[McpServer],
        timing: LinkTiming,
        *,
        call_timeout: float,
        events: McpEvents | None = None,
    ) -> None:
        self._call_timeout = call_timeout
        self._events = events
        self.links: tuple[ServerLink, ...] = ()
        if servers:
            from bot.mcp.link import ServerLink  # the SDK: only when there are servers

            self.links = tuple(ServerLink(server, timing, self._changed) for server in servers)
        self._tools: tuple[McpTool, ...] = ()

    def start(self) -> None:
        for link in self.links:
            link.start()

    def tools_for(self, context: ToolContext) -> Sequence[Tool]:  # noqa: ARG002 (same tools everywhere)
        return self._tools

    def states(self) -> list[tuple[str, bool, int]]:
        """(server, up, tools offered) for each configured server."""
        counts: dict[str, int] = {}
        for tool in self._tools:
            counts[tool.server] = counts.get(tool.server, 0) + 1
        return [(link.name, link.up, counts.get(link.name, 0)) for link in self.links]

    async def aclose(self) -> None:
        await asyncio.gather(*(link.aclose() for link in self.links))
        self._tools = ()

    def _changed(self, _link: ServerLink) -> None:
        from bot.mcp.tool import McpTool  # loaded with the links

        tools: list[McpTool] = []
        taken: set[str] = set()
        for link in self.links:
            if not link.up:
                continue
            server = link.server
            for info in link.tools:
                if not server.allows(info.name):
                    continue
                name = tool_name(server.name, info.name, taken)
                taken.add(name)
                spec = ToolSpec(
                    name=name,
                    description=_description(server.name, info.description or info.title or info.name),
                    parameters=_parameters(info.input_schema),
                    needs_approval=server.needs_approval(info.name),
                )
                timeout = server.timeout or self._call_timeout
                tools.append(McpTool(spec, server.name, info.name, link, timeout, self._events))
        self._tools = tuple(tools)


def _description(server: str, text: str) -> str:
    text = f"[{server}] {text.strip()}"
    return text if len(text) <= _MAX_DESCRIPTION else text[: _MAX_DESCRIPTION - 1] + "…"


def _parameters(schema: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The server's input schema; function calling wants an object at the top."""
    if not schema or schema.get("type") != "object":
        return _EMPTY_PARAMETERS
    return schema if "properties" in schema else {**schema, "properties": {}}


async def start_mcp(
    settings: Settings, metrics: Metrics | None = None, environ: Mapping[str, str] | None = None
) -> McpToolBox:
    """Read MCP_CONFIG_FILE (McpConfigError on a mistake) and connect its servers in the background."""
    servers = load_mcp_config(
        settings.mcp_config_path,
        process_environment() if environ is None else environ,
        required=settings.mcp_config_file is not None,
    )
    timing = LinkTiming(
        connect=settings.mcp_connect_timeout,
        health_interval=settings.mcp_health_interval,
        retry_min=settings.mcp_retry_min_seconds,
        retry_max=settings.mcp_retry_max_seconds,
    )
    box = McpToolBox(servers, timing, call_timeout=settings.mcp_call_timeout, events=metrics)
    if metrics is not None:
        metrics.read_at_scrape(
            "slackbot_mcp_server_up",
            "1 while an MCP server is connected, 0 while it is retried",
            lambda: [([name], 1.0 if up else 0.0) for name, up, _ in box.states()],
            ["server"],
        )
        metrics.read_at_scrape(
            "slackbot_mcp_server_tools",
            "Tools an MCP server offers the model now",
            lambda: [([name], float(count)) for name, _, count in box.states()],
            ["server"],
        )
    if servers:
        log.info("MCP servers configured: %s", ", ".join(s.name for s in servers))
    box.start()
    return box
