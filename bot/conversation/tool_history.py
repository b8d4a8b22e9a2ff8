"""A turn's tool rounds as stored on its answer (`messages.tool_exchange`) and as sent back later.

The answer row keeps everything people saw as its `content` (text the model wrote before calling a
tool included, so recovery redraws the Slack message right); the exchange keeps each round's
assistant message with its calls and the tool results, and later turns replay them in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bot.llm.types import ChatMessage, ToolCall


def to_exchange(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The tool rounds' messages as JSON for the answer row (NULs dropped: PostgreSQL refuses them)."""
    entries: list[dict[str, Any]] = []
    for message in messages:
        entry: dict[str, Any] = {"role": message.role, "content": message.content.replace("\x00", "")}
        if message.tool_calls:
            entry["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments.replace("\x00", "")}
                for c in message.tool_calls
            ]
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        entries.append(entry)
    return entries


def replay(role: str, content: str, exchange: Sequence[Mapping[str, Any]] | None) -> list[ChatMessage]:
    """The messages of a stored message to send upstream: an answer's tool rounds, then its text."""
    if role != "assistant" or not exchange:
        return [ChatMessage(role, content)] if content else []
    messages: list[ChatMessage] = []
    said = ""
    for entry in exchange:
        role, text = str(entry.get("role")), str(entry.get("content") or "")
        if role == "tool":
            messages.append(ChatMessage("tool", text, tool_call_id=str(entry.get("tool_call_id") or "")))
        elif role == "assistant":
            calls = tuple(
                ToolCall(str(c.get("id")), str(c.get("name")), str(c.get("arguments")))
                for c in entry.get("tool_calls") or ()
                if isinstance(c, Mapping)
            )
            messages.append(ChatMessage("assistant", text, tool_calls=calls))
            said += text
    # The stored content starts with what the rounds already said; the rest is the final answer.
    final = content[len(said) :] if content.startswith(said) else content
    if final:
        messages.append(ChatMessage("assistant", final))
    return messages
