"""What an MCP tool call's result becomes for the model: its text, with other content noted, bounded."""

from __future__ import annotations

import json

from mcp.types import (
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from bot.conversation.tools import ToolResult

MAX_RESULT_CHARS = 50_000  # a result is sent upstream in every later round of the turn


def to_tool_result(result: CallToolResult, limit: int = MAX_RESULT_CHARS) -> ToolResult:
    """Text blocks as they are; images, audio and binary resources as a one-line note the model can
    mention (it cannot see them); structured content when no text came with it."""
    parts: list[str] = []
    notes: list[str] = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        elif isinstance(block, ImageContent | AudioContent):
            kind = "image" if isinstance(block, ImageContent) else "audio"
            size = len(block.data) * 3 // 4  # base64
            notes.append(f"[{kind} {block.mime_type}, about {_size(size)}: not shown to the model]")
        elif isinstance(block, ResourceLink):
            notes.append(f"[resource link: {block.name} <{block.uri}>]")
        elif isinstance(block, EmbeddedResource):
            resource = block.resource
            if isinstance(resource, TextResourceContents):
                parts.append(f"[resource {resource.uri}]\n{resource.text}")
            elif isinstance(resource, BlobResourceContents):
                blob = _size(len(resource.blob) * 3 // 4)
                notes.append(
                    f"[resource {resource.uri} ({resource.mime_type or 'binary'}, about {blob}): not shown]"
                )
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    text = "\n\n".join(parts + notes) or "(the tool returned nothing)"
    if len(text) > limit:
        text = text[:limit] + f"\n[… cut: {len(text) - limit:,} more characters]"
    detail = _detail(len(parts), len(notes), result.is_error)
    return ToolResult(content=text, ok=not result.is_error, detail=detail)


def _detail(texts: int, notes: int, error: bool) -> str:
    if error:
        return "the tool reported an error"
    shown = f"{texts} text part{'s' if texts != 1 else ''}"
    return shown if not notes else f"{shown}, {notes} not shown"


def _size(count: int) -> str:
    return f"{count:,} bytes" if count < 10_000 else f"{count // 1024:,} KB"
