"""`current_time(tz)`: the date and time now in an IANA time zone, as ISO 8601 with its offset."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.conversation.tools import ToolContext, ToolResult, ToolSpec

SPEC = ToolSpec(
    name="current_time",
    description="The current date and time in a time zone, as ISO 8601 with the UTC offset.",
    parameters={
        "type": "object",
        "properties": {
            "tz": {"type": "string", "description": "An IANA time zone such as Europe/Paris; default UTC."}
        },
    },
)


class CurrentTime:
    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._now = now

    @property
    def spec(self) -> ToolSpec:
        return SPEC

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:  # noqa: ARG002
        name = arguments.get("tz") or "UTC"
        if not isinstance(name, str):
            return ToolResult("Error: tz must be a string such as Europe/Paris.", ok=False, detail="bad zone")
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):  # ValueError: not even a key ("../x", "")
            message = f"Error: {name[:64]!r} is not an IANA time zone (e.g. Europe/Paris, America/New_York)."
            return ToolResult(message, ok=False, detail="unknown zone")
        now = self._now().astimezone(zone)
        return ToolResult(f"{now.isoformat(timespec='seconds')} ({name})", detail=name)
