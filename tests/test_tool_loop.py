"""The tool loop in the conversation service (real client, fake AI/ML API, real databases), the
streamed tool-call assembly, approval, stopping while a tool runs, and history trimming."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.budget import TRIMMED_RESULT, TokenEstimator, fit_to_budget
from bot.conversation.keys import ConversationKey, ConversationKind
from bot.conversation.service import ConversationService, ServiceConfig, Turn
from bot.conversation.stop import StopHandle, StopRequest
from bot.conversation.tool_loop import ToolLimits
from bot.conversation.tools import ToolContext, ToolResult, ToolSpec
from bot.llm.client import AimlClient
from bot.llm.sse import ChunkEvent, StreamAccumulator, iter_events
from bot.llm.types import ChatMessage, ToolCall
from bot.storage.models import ToolCallRecord, UsageRecord
from bot.tools.box import StaticToolBox
from tests.fakes.aimlapi import FakeAimlApi, Reply, ToolCallScript
from tests.sinks import RecordingSink

KEY = ConversationKey("T1", "C1", "1700000000.000100")


class Recorder:
    """A tool that answers with its arguments, after `delay` seconds; counts its runs."""

    def __init__(self, name: str = "echo", *, approval: bool = False, delay: float = 0.0) -> None:
        self._spec = ToolSpec(name, "Echoes its arguments.", needs_approval=approval)
        self.delay = delay
        self.runs: list[Mapping[str, Any]] = []
        self.spans: list[tuple[float, float]] = []  # (began, ended) of each run, loop time
        self.began: list[float] = []  # each run's start, loop time, ended or not

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:  # noqa: ARG002
        self.runs.append(arguments)
        began = asyncio.get_running_loop().time()
        self.began.append(began)
        await asyncio.sleep(self.delay)
        self.spans.append((began, asyncio.get_running_loop().time()))
        return ToolResult(f"echo {json.dumps(dict(arguments), sort_keys=True)}", detail="echoed")


class Answer:
    """An approver with a fixed answer that remembers what it was asked."""

    def __init__(self, approve: bool) -> None:
        self.answer = approve
        self.asked: list[tuple[str, Mapping[str, Any], str | None]] = []

    async def approve(self, spec: ToolSpec, arguments: Mapping[str, Any], context: ToolContext) -> bool:
        self.asked.append((spec.name, arguments, context.user_id))
        return self.answer


@pytest.fixture
async def llm(aiml: FakeAimlApi) -> AsyncIterator[AimlClient]:
    client = AimlClient(api_key="test-key", base_url=aiml.base_url, model="zhipu/glm-5", read_timeout=5)
    yield client
    await client.aclose()


def service(
    sessions: async_sessionmaker[AsyncSession], llm: AimlClient, *tools: Any, **options: Any
) -> ConversationService:
    config = ServiceConfig("You are a test.", 200_000, 1000)
    return ConversationService(sessions, llm, config, tools=StaticToolBox(tools), **options)


def turn(text: str = "go") -> Turn:
    return Turn(KEY, ConversationKind.CHANNEL, text, "U1")


async def all_rows(sessions: async_sessionmaker[AsyncSession], model: type[Any]) -> list[Any]:
    async with sessions() as session:
        return list((await session.execute(select(model).order_by(model.id))).scalars())


def calling(*calls: ToolCallScript, content: str = "") -> Reply:
    return Reply(content=content, tool_calls=calls)


async def test_split_repeated_and_interleaved_fragments_assemble_into_whole_calls(aiml, llm):
    tricky = '{"text": "a \\"quoted\\" \\u00e9 word", "n": [1, 2]}'
    aiml.enqueue(
        Reply(
            content="Looking.",
            tool_calls=[
                ToolCallScript("one", tricky, id="c1", pieces=17),
                ToolCallScript("two", "{}", id="c2"),
            ],
            interleave_calls=True,
        )
    )
    async with llm.stream_chat([ChatMessage("user", "hi")], tools=[{"type": "function"}]) as stream:
        texts = [d.content async for d in stream]
    result = stream.result()
    assert "".join(texts) == "Looking." and result.finish_reason == "tool_calls"
    assert result.tool_calls == (ToolCall("c1", "one", tricky), ToolCall("c2", "two", "{}"))
    assert json.loads(result.tool_calls[0].arguments)["text"] == 'a "quoted" é word'


def test_an_id_and_name_repeated_on_every_fragment_are_not_doubled():
    lines = []
    for piece in ('{"a"', ": 1}"):
        fragment = {
            "index": 0,
            "id": "call_x",
            "type": "function",
            "function": {"name": "f", "arguments": piece},
        }
        chunk = {"choices": [{"index": 0, "delta": {"tool_calls": [fragment]}}]}
        lines.append("data: " + json.dumps(chunk))
    accumulator = StreamAccumulator()
    for event in iter_events(lines):
        assert isinstance(event, ChunkEvent)
        accumulator.apply(event)
    assert accumulator.tool_calls == (ToolCall("call_x", "f", '{"a": 1}'),)


async def test_a_tool_that_needs_approval_runs_only_when_the_person_approves(sessions, llm, aiml):
    risky = Recorder("risky", approval=True)
    aiml.enqueue(calling(ToolCallScript("risky", '{"x": 1}')), Reply(content="Denied, fine."))
    await service(sessions, llm, risky).reply(turn(), RecordingSink())  # no approver: denied
    assert risky.runs == []
    [denied] = [m for m in aiml.chat_requests[1].json["messages"] if m["role"] == "tool"]
    assert "did not approve" in denied["content"]

    approver = Answer(True)
    aiml.enqueue(calling(ToolCallScript("risky", '{"x": 2}')), Reply(content="Done."))
    await service(sessions, llm, risky, approver=approver).reply(turn(), RecordingSink())
    assert risky.runs == [{"x": 2}] and approver.asked == [("risky", {"x": 2}, "U1")]
    assert [r.outcome for r in await all_rows(sessions, ToolCallRecord)] == ["denied", "ok"]


async def test_progress_shows_each_call_running_then_done_and_the_summary_lists_the_tools(
    sessions, llm, aiml
):
    aiml.enqueue(
        calling(ToolCallScript("echo", '{"a": 1}', id="c1")), Reply(content="Echoed.", credits_used=6)
    )
    sink = RecordingSink()
    outcome = await service(sessions, llm, Recorder()).reply(turn(), sink)
    assert [[(s.name, s.status) for s in steps] for steps in sink.steps] == [
        [("echo", "in_progress")],
        [("echo", "complete")],
    ]
    assert sink.steps[-1][0].detail == "echoed"
    assert sink.summary is not None and sink.summary.tools_used == ("echo",)
    assert sink.summary.credits_used == 1234 + 6
    # Metrics and quotas read the turn's cost from the outcome: every round's.
    assert outcome.usage is not None and outcome.usage.usage.credits_used == 1234 + 6
    assert [u.credits_used for u in await all_rows(sessions, UsageRecord)] == [1234, 6]


async def test_a_person_stopping_while_a_tool_runs_ends_the_turn_with_what_was_shown(sessions, llm, aiml):
    slow = Recorder(delay=10)
    aiml.enqueue(calling(ToolCallScript("echo", "{}"), content="One moment. "))
    stop = StopHandle()
    sink = RecordingSink()
    asyncio.get_running_loop().call_later(0.5, stop.stop, StopRequest("Ada"))
    outcome = await asyncio.wait_for(service(sessions, llm, slow).reply(turn(), sink, stop), 5)
    assert outcome.label == "stopped" and sink.text == "One moment. "
    assert sink.summary is not None and sink.summary.note == "Stopped by Ada"
    assert len(aiml.chat_requests) == 1
    assert [u.status for u in await all_rows(sessions, UsageRecord)] == ["stopped"]


class LateAnswer(Answer):
    """Approves, but only after `delay` seconds, as a person who clicks late."""

    def __init__(self, delay: float) -> None:
        super().__init__(True)
        self.delay = delay

    async def approve(self, spec: ToolSpec, arguments: Mapping[str, Any], context: ToolContext) -> bool:
        await asyncio.sleep(self.delay)
        return await super().approve(spec, arguments, context)


async def test_a_call_approved_after_the_turn_timeout_still_runs_with_its_own_time(sessions, llm, aiml):
    risky = Recorder("risky", approval=True, delay=0.2)
    aiml.enqueue(calling(ToolCallScript("risky", '{"x": 1}')), Reply(content="Done."))
    limits = ToolLimits(max_rounds=8, call_timeout=5, turn_timeout=0.5)
    approver = LateAnswer(delay=1.0)  # the person answers after the turn's whole time
    outcome = await service(sessions, llm, risky, approver=approver, tool_limits=limits).reply(
        turn(), RecordingSink()
    )
    assert outcome.content == "Done."
    [answer] = [m for m in aiml.chat_requests[1].json["messages"] if m["role"] == "tool"]
    assert answer["content"] == 'echo {"x": 1}'
    assert [r.outcome for r in await all_rows(sessions, ToolCallRecord)] == ["ok"]
    # The wait was the person's: the model may still use tools after the result.
    assert [r.json["tool_choice"] for r in aiml.chat_requests] == ["auto", "auto"]


async def test_the_calls_of_one_round_run_at_the_same_time(sessions, llm, aiml):
    slow = Recorder(delay=0.5)
    both = calling(ToolCallScript("echo", '{"n": 1}', id="c1"), ToolCallScript("echo", '{"n": 2}', id="c2"))
    aiml.enqueue(both, Reply(content="Both."))
    await service(sessions, llm, slow).reply(turn(), RecordingSink())
    (began_a, ended_a), (began_b, ended_b) = slow.spans
    # Each began before the other ended: they overlapped, whatever the machine's speed.
    assert max(began_a, began_b) < min(ended_a, ended_b)
    # The round took about one call's time, well under the two calls' sum.
    assert max(ended_a, ended_b) - min(began_a, began_b) < (ended_a - began_a) + (ended_b - began_b) - 0.3
    assert [r.outcome for r in await all_rows(sessions, ToolCallRecord)] == ["ok", "ok"]


async def test_a_round_cut_by_a_stop_records_the_calls_that_ended_and_the_others_as_cancelled(
    sessions, llm, aiml
):
    fast, slow = Recorder("fast"), Recorder("slow", delay=10)
    aiml.enqueue(calling(ToolCallScript("fast", "{}"), ToolCallScript("slow", "{}")))
    stop, loop = StopHandle(), asyncio.get_running_loop()
    stop_at = loop.time() + 0.5
    loop.call_at(stop_at, stop.stop, StopRequest("Ada"))
    outcome = await asyncio.wait_for(
        service(sessions, llm, fast, slow).reply(turn(), RecordingSink(), stop), 5
    )
    assert outcome.label == "stopped"
    records = await all_rows(sessions, ToolCallRecord)
    assert [(r.tool, r.outcome, r.round) for r in records] == [("fast", "ok", 1), ("slow", "cancelled", 1)]
    # The cut call's duration is the time it ran until the stop (not zero), however late it began.
    assert slow.began[0] < stop_at - 0.1  # it had run a while when the stop came
    ran_ms = (stop_at - slow.began[0]) * 1000
    assert ran_ms - 50 <= records[1].duration_ms < 5000


async def test_a_round_cut_by_a_shutdown_records_its_calls_and_keeps_no_half_exchange(sessions, llm, aiml):
    from bot.storage.models import Message

    slow = Recorder("slow", delay=10)
    aiml.enqueue(calling(ToolCallScript("slow", "{}")))
    replying = asyncio.create_task(service(sessions, llm, slow).reply(turn(), RecordingSink()))
    await asyncio.sleep(0.5)
    replying.cancel()
    with pytest.raises(asyncio.CancelledError):  # the reply is stored as interrupted, then it goes on
        await asyncio.wait_for(replying, 5)
    assert [(r.tool, r.outcome) for r in await all_rows(sessions, ToolCallRecord)] == [("slow", "cancelled")]
    # A call without its result must not be sent back in a later turn.
    assert [m.tool_exchange for m in await all_rows(sessions, Message) if m.role.value == "assistant"] == [
        None
    ]


async def test_the_turn_timeout_sends_the_model_one_last_call_without_tools(sessions, llm, aiml):
    slow = Recorder(delay=0.6)
    aiml.enqueue(calling(ToolCallScript("echo", "{}")), Reply(content="Ok."))
    limits = ToolLimits(max_rounds=8, call_timeout=5, turn_timeout=0.5)
    outcome = await service(sessions, llm, slow, tool_limits=limits).reply(turn(), RecordingSink())
    assert outcome.content == "Ok."
    assert [r.json["tool_choice"] for r in aiml.chat_requests] == ["auto", "none"]


def test_the_oldest_tool_results_are_trimmed_first_when_history_is_too_long():
    call = ToolCall("c", "fetch_url", "{}")
    old = [
        ChatMessage("user", "q1"),
        ChatMessage("assistant", "", (call,)),
        ChatMessage("tool", "x" * 4000, tool_call_id="c"),
    ]
    new = [
        ChatMessage("user", "q2"),
        ChatMessage("assistant", "", (call,)),
        ChatMessage("tool", "y" * 4000, tool_call_id="c"),
    ]
    estimator = TokenEstimator()
    full = estimator.estimate([*old, *new, ChatMessage("user", "q3")])
    request = fit_to_budget(None, [*old, *new], ChatMessage("user", "q3"), full - 100, estimator)
    contents = [m.content for m in request.messages]
    assert contents[2] == TRIMMED_RESULT and contents[5] == "y" * 4000
    assert request.dropped_turns == 0


async def test_a_channel_that_limits_its_tools_offers_the_model_only_those(sessions, llm, aiml):
    from dataclasses import replace as changed

    from bot.tools.box import EnabledTools

    box = EnabledTools(
        StaticToolBox([Recorder("a"), Recorder("b"), Recorder("c")]), enabled=frozenset({"a", "b"})
    )
    config = ServiceConfig("You are a test.", 200_000, 1000)
    here = Turn(
        KEY,
        ConversationKind.CHANNEL,
        "go",
        "U1",
        channel=changed(turn().channel, tools=frozenset({"b", "c"})),
    )
    aiml.enqueue(Reply(content="Fine."))
    await ConversationService(sessions, llm, config, tools=box).reply(here, RecordingSink())
    assert [t["function"]["name"] for t in aiml.chat_requests[0].json["tools"]] == ["b"]


def test_tools_enabled_takes_tool_names_and_mcp_server_names():
    from bot.tools.box import EnabledTools

    offered = [
        Recorder(n) for n in ("current_time", "fetch_url", "github__search", "github__read", "jira__find")
    ]
    box = EnabledTools(StaticToolBox(offered), enabled=frozenset({"current_time", "github", "jira__find"}))
    assert box.names() == ("current_time", "github__search", "github__read", "jira__find")


async def test_the_terminal_prints_one_line_per_finished_tool_call():
    import io

    from bot.cli.chat import TerminalSink
    from bot.conversation.ports import ToolStep

    out = io.StringIO()
    sink = TerminalSink(out)
    await sink.tool_progress([ToolStep("c1", "fetch_url", "in_progress")])
    await sink.tool_progress([ToolStep("c1", "fetch_url", "complete", "example.org, 3 kB")])
    await sink.tool_progress([ToolStep("c1", "fetch_url", "complete", "example.org, 3 kB")])
    assert out.getvalue().count("[fetch_url complete: example.org, 3 kB]") == 1
