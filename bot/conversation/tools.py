"""Tools the model may call: what a tool is, what it gets to know about the turn, what it returns.

The tool loop (the conversation service) asks a `ToolBox` for the tools of a turn, sends their specs
upstream, runs the calls the model makes and sends the results back. Tools live where their platform
does: built-ins with no platform here or in bot/tools/, Slack-reading tools at the Slack edge, MCP
servers' tools behind an MCP client; the domain only sees this interface.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.conversation.channel_settings import ChannelSettings
from bot.conversation.keys import ConversationKey
from bot.conversation.person import Person


@dataclass(frozen=True)
class ToolSpec:
    """What the model is told about a tool (OpenAI-compatible `tools[].function`)."""

    name: str  # unique in a turn; MCP tools are namespaced by server ("server__tool")
    description: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    needs_approval: bool = False  # the asker approves each call before it runs


@dataclass(frozen=True)
class ToolContext:
    """Who asks and where: what a tool checks before it reads anything on the person's behalf."""

    key: ConversationKey
    user_id: str | None
    person: Person | None
    channel: ChannelSettings


@dataclass(frozen=True)
class ToolResult:
    """A tool's answer for the model. `ok=False` results are errors the model can read and act on."""

    content: str
    ok: bool = True
    detail: str | None = None  # a short line for people watching the progress ("3 messages read")


class Tool(Protocol):
    @property
    def spec(self) -> ToolSpec: ...

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        """Run one call; raise nothing for expected failures (return `ok=False`), the loop bounds time."""
        ...


class ToolBox(Protocol):
    """The tools available to one turn (enabled globally and in the channel, servers that are up)."""

    def tools_for(self, context: ToolContext) -> Sequence[Tool]: ...


class Approver(Protocol):
    """Asks the person whether a tool marked `needs_approval` may run; False on deny or timeout."""

    async def approve(self, spec: ToolSpec, arguments: Mapping[str, Any], context: ToolContext) -> bool: ...
