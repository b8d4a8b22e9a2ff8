"""The tools of a turn: the built-ins and any other box (MCP servers, Slack tools), minus those
switched off globally (`TOOLS_ENABLED`)."""

from __future__ import annotations

from collections.abc import Sequence

from bot.conversation.channel_settings import DEFAULT_CHANNEL_SETTINGS
from bot.conversation.keys import ConversationKey
from bot.conversation.tools import Tool, ToolBox, ToolContext

# No turn: what the boxes offer a channel with the default settings (none of them looks further).
_ANY_CHANNEL = ToolContext(ConversationKey("", "", ""), None, None, DEFAULT_CHANNEL_SETTINGS)


class StaticToolBox:
    """A fixed set of tools, the same for every turn."""

    def __init__(self, tools: Sequence[Tool]) -> None:
        self._tools = tuple(tools)

    def tools_for(self, context: ToolContext) -> Sequence[Tool]:  # noqa: ARG002
        return self._tools


class EnabledTools:
    """Every box's tools for the turn, first box first on a name clash, filtered by `enabled`
    (None: all; an MCP server's name enables all its `server__tool` tools) and by the channel's
    own list (`ChannelSettings.tools`, None: all)."""

    def __init__(self, *boxes: ToolBox, enabled: frozenset[str] | None = None) -> None:
        self._boxes = boxes
        self._enabled = enabled

    def tools_for(self, context: ToolContext) -> Sequence[Tool]:
        chosen: dict[str, Tool] = {}
        here = context.channel.tools
        for box in self._boxes:
            for tool in box.tools_for(context):
                name = tool.spec.name
                if name in chosen or not self._is_enabled(name):
                    continue
                if here is None or name in here:
                    chosen[name] = tool
        return tuple(chosen.values())

    def _is_enabled(self, name: str) -> bool:
        enabled = self._enabled
        return enabled is None or name in enabled or any(name.startswith(f"{e}__") for e in enabled)

    def names(self) -> tuple[str, ...]:
        """The names of the tools offered now within TOOLS_ENABLED, before any channel's own list
        (what the channel settings form lets admins choose from)."""
        return tuple(tool.spec.name for tool in self.tools_for(_ANY_CHANNEL))
