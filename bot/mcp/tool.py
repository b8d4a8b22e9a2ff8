"""One MCP server's tool as the tool loop sees it: a spec and `run`, which never raises for a failure."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcp import MCPError

from bot.conversation.tools import ToolContext, ToolResult, ToolSpec
from bot.mcp.link import ServerLink, ServerUnavailable
from bot.mcp.results import to_tool_result
from bot.mcp.toolbox import McpEvents

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class McpTool:
    """One tool of one server, as the tool loop sees it."""

    spec: ToolSpec
    server: str
    tool: str  # the server's own name for it
    link: ServerLink
    timeout: float
    events: McpEvents | None = None

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        started = time.monotonic()
        outcome, result = await self._call(arguments, context)
        if self.events is not None:
            self.events.mcp_tool_call(self.server, outcome, time.monotonic() - started)
        return result

    async def _call(self, arguments: Mapping[str, Any], context: ToolContext) -> tuple[str, ToolResult]:
        where = {"mcp_server": self.server, "tool": self.tool, "channel": context.key.channel_id}
        try:
            answer = await self.link.call(self.tool, dict(arguments), self.timeout)
        except ServerUnavailable:
            return "unavailable", ToolResult(
                f"The {self.server} server is not connected right now; answer without its tools.",
                ok=False,
                detail="server unavailable",
            )
        except TimeoutError:
            self.link.check_soon()
            log.warning("MCP call timed out after %g s", self.timeout, extra=where)
            return "timeout", ToolResult(
                f"{self.spec.name} did not answer within {self.timeout:g} seconds.",
                ok=False,
                detail="timed out",
            )
        except MCPError as exc:
            log.info("MCP call refused: %s", exc.code, extra=where)
            return "error", ToolResult(
                f"{self.spec.name} failed: {exc.message[:500]}", ok=False, detail="failed"
            )
        except (
            Exception
        ) as exc:  # the transport's own errors vary (httpx2, anyio, pydantic): all mean "broken"
            self.link.check_soon()
            log.warning("MCP call failed: %s", type(exc).__name__, extra=where)
            return "failed", ToolResult(
                f"{self.spec.name} could not be reached (the connection to {self.server} failed).",
                ok=False,
                detail="connection failed",
            )
        result = to_tool_result(answer)
        return ("ok" if result.ok else "error"), result
