"""A reply sink that records what the conversation service sent it (the terminal's twin)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bot.conversation.ports import ReplyPart, ReplySummary, ToolStep


@dataclass
class RecordingSink:
    refs_: list[str] = field(default_factory=lambda: ["1700000000.000001"])
    text: str = ""
    thought: int = 0
    summary: ReplySummary | None = None
    failure: str | None = None
    events: list[str] = field(default_factory=list)
    steps: list[tuple[ToolStep, ...]] = field(default_factory=list)

    @property
    def refs(self) -> Sequence[str]:
        return self.refs_

    @property
    def parts(self) -> Sequence[ReplyPart]:
        return ()

    async def thinking(self) -> None:
        self.thought += 1
        self.events.append("thinking")

    async def tool_progress(self, steps: Sequence[ToolStep]) -> None:
        self.steps.append(tuple(steps))
        self.events.append("tools")

    async def append(self, text: str) -> None:
        self.text += text
        self.events.append("append")

    async def finish(self, summary: ReplySummary) -> None:
        self.summary = summary
        self.events.append("finish")

    async def fail(self, note: str) -> None:
        self.failure = note
        self.events.append("fail")
