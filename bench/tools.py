"""`python -m bench --scenario tools` (or `python -m bench.tools`): what the tool loop adds to a turn.

In process: the real ConversationService and AimlClient against the fake AI/ML API on loopback, a
migrated SQLite database, a reply sink that only counts. Tool turns have 3 rounds (two with a tool
call, then the answer) and alternate with plain turns (the answer alone); the tool sleeps a fixed
time. A turn's own time is its wall time minus the time spent in upstream streams (opened to ended,
timed around the model) and in the tool. The loop's cost per round is a tool turn's own time minus a
plain turn's (the answer's round, which both have), divided by the 2 tool rounds: parsing, tool
dispatch, progress, the ledger rows and the round's database writes. Target: under 50 ms a round.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from bot.conversation.keys import ConversationKey, ConversationKind
from bot.conversation.ledger import Ledger
from bot.conversation.ports import ChatStreamLike, ReplyPart, ReplySummary, ToolStep
from bot.conversation.service import ConversationService, ServiceConfig, Turn
from bot.conversation.tools import ToolContext, ToolResult, ToolSpec
from bot.llm.client import AimlClient
from bot.llm.types import ChatMessage, CompletionResult, Delta
from bot.storage.db import create_engine, session_factory
from bot.storage.migrate import upgrade_head
from bot.tools.box import StaticToolBox
from tests.fakes.aimlapi import FakeAimlApi, Reply, ToolCallScript

TURNS = 30
TOOL_ROUNDS = 2  # rounds with a tool call; the answer's round follows, as in a plain turn
TOOL_SECONDS = 0.02
TARGET_MS = 50.0


class SleepTool:
    """A tool that takes a fixed time, so its share of the turn is known."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec("wait_a_bit", "Waits a moment.")

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:  # noqa: ARG002
        began = time.monotonic()
        await asyncio.sleep(TOOL_SECONDS)
        self.seconds += time.monotonic() - began
        return ToolResult("waited", detail="waited")


class TimedModel:
    """The real client, with the time each stream was open added up."""

    def __init__(self, client: AimlClient) -> None:
        self._client = client
        self.model = client.model
        self.seconds = 0.0

    def stream_chat(self, messages: Sequence[ChatMessage], **options: Any) -> ChatStreamLike:
        return _TimedStream(self, self._client.stream_chat(messages, **options))


class _TimedStream:
    def __init__(self, owner: TimedModel, inner: ChatStreamLike) -> None:
        self._owner, self._inner, self._began = owner, inner, 0.0

    async def __aenter__(self) -> _TimedStream:
        self._began = time.monotonic()
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)
        self._owner.seconds += time.monotonic() - self._began

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._inner.__aiter__()

    def result(self) -> CompletionResult:
        return self._inner.result()


class CountingSink:
    def __init__(self) -> None:
        self.progress = 0

    @property
    def refs(self) -> Sequence[str]:
        return ()

    @property
    def parts(self) -> Sequence[ReplyPart]:
        return ()

    async def thinking(self) -> None:
        pass

    async def tool_progress(self, steps: Sequence[ToolStep]) -> None:  # noqa: ARG002
        self.progress += 1

    async def append(self, text: str) -> None:
        pass

    async def finish(self, summary: ReplySummary) -> None:
        pass

    async def fail(self, note: str) -> None:
        pass


async def measure(turns: int = TURNS) -> dict[str, float]:
    """Per-round loop overhead in ms over `turns` tool turns: median, p95, max."""
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}"
        await upgrade_head(url)
        engine = create_engine(url)
        async with (
            FakeAimlApi() as aiml,
            AimlClient(api_key="test-key", base_url=aiml.base_url, model="zhipu/glm-5") as client,
        ):
            sessions = session_factory(engine)
            model, tool = TimedModel(client), SleepTool()
            config = ServiceConfig("You are a bench.", 200_000, 1_000)
            service = ConversationService(
                sessions, model, config, ledger=Ledger(sessions, None), tools=StaticToolBox([tool])
            )
            overheads: list[float] = []
            baseline: list[float] = []  # the same turn's cost with one round and no tool
            for n in range(2 * turns + 6):  # the first turns warm up connections and caches
                tool_rounds = TOOL_ROUNDS if n % 2 == 0 else 0
                for _ in range(tool_rounds):
                    aiml.enqueue(Reply(content="", tool_calls=[ToolCallScript("wait_a_bit", "{}")]))
                aiml.enqueue(Reply(content="Done waiting.", chunk_size=4))
                model.seconds = tool.seconds = 0.0
                key = ConversationKey("T1", "CBENCH", f"{1000 + n}.000001")
                began = time.monotonic()
                await service.reply(Turn(key, ConversationKind.CHANNEL, "wait, please", "U1"), CountingSink())
                wall = time.monotonic() - began
                if n >= 6:
                    (overheads if tool_rounds else baseline).append(
                        (wall - model.seconds - tool.seconds) * 1000
                    )
        await engine.dispose()
    base = statistics.median(baseline)
    added = per_tool_round(overheads, base)
    return {
        "median_ms": round(statistics.median(added), 2),
        "p95_ms": round(added[int(0.95 * (len(added) - 1))], 2),
        "max_ms": round(added[-1], 2),
        "plain_turn_ms": round(base, 2),
        "turns": turns,
    }


def per_tool_round(tool_turns_ms: Sequence[float], plain_turn_ms: float) -> list[float]:
    """What the loop adds, sorted: each tool turn's own time beyond a plain turn's (the answer's
    round, which both have), per tool round."""
    return sorted((t - plain_turn_ms) / TOOL_ROUNDS for t in tool_turns_ms)


def main() -> int:
    result = asyncio.run(measure())
    verdict = "met" if result["p95_ms"] < TARGET_MS else "MISSED"
    print(
        f"tool loop overhead per tool round over {result['turns']} turns of {TOOL_ROUNDS} tool rounds "
        "and an answer: "
        f"median {result['median_ms']} ms, p95 {result['p95_ms']} ms, max {result['max_ms']} ms "
        f"(target < {TARGET_MS:g} ms: {verdict}); a plain turn's own time {result['plain_turn_ms']} ms"
    )
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    sys.exit(main())
