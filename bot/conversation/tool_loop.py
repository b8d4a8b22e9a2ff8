"""The tool loop of one turn: model -> tool calls -> results -> model, until the model answers.

Platform-free. Each round streams into the same reply sink (text the model writes before a call is
shown as it comes); the calls of a round run concurrently, each bounded by its own timeout and all
by the turn's, whose clock stops while a person is asked to approve a call. Past the rounds or the
turn's time the model is asked once more, tools off, to answer with what it has. Before each round
after the first, the turn's credit hold is moved to the next call (a hard limit reached ends the
answer with a line saying so). A call the model got wrong (unknown tool, arguments that are not a
JSON object) is answered with an error it can read and correct, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.budget import TokenEstimator, trim_tool_results
from bot.conversation.ledger import Ledger
from bot.conversation.ports import CallBudget, ReplySink, StepStatus, ToolStep
from bot.conversation.stop import StopHandle, Stopped, StopRequest, unless_stopped
from bot.conversation.tool_history import to_exchange
from bot.conversation.tools import Approver, Tool, ToolContext, ToolResult, ToolSpec
from bot.llm.types import ChatMessage, CompletionResult, ToolCall, Usage
from bot.storage.db import UNAVAILABLE, error_reason
from bot.storage.models import MessageStatus
from bot.storage.tool_calls import ToolCallRow, store_tool_round
from bot.storage.usage import UsageEntry

log = logging.getLogger(__name__)

NOTE_INTERRUPTED = "The answer was interrupted."
STOPPED = "stopped"  # the usage status of a turn a person stopped (as bot.conversation.service)
MAX_RESULT_CHARS = 30_000  # one result the model reads; tools cap their own output below this


class ToolEvents(Protocol):
    """Counted by the operator's metrics: each call's tool ("unknown" if made up), outcome, time."""

    def tool_call_ended(self, tool: str, outcome: str, seconds: float) -> None: ...


@dataclass(frozen=True)
class ToolLimits:
    max_rounds: int = 8  # model calls that may use tools; one more answers without them
    call_timeout: float = 30.0  # seconds per tool call
    turn_timeout: float = 120.0  # seconds for all the rounds of a turn (model and tools)


@dataclass(frozen=True)
class StreamEnd:
    """How one streamed completion ended; the service ends the reply with the last one."""

    result: CompletionResult
    status: MessageStatus
    label: str  # usage status: "complete", "stopped", "cancelled" or the upstream error kind
    note: str | None  # None: finish normally; else fail with this note
    stopped: StopRequest | None = None  # a person stopped the answer; it finishes with what came


@dataclass(frozen=True)
class RoundRequest:
    """What the service streams for one round."""

    request_id: str
    tools: tuple[Mapping[str, Any], ...]
    tool_choice: str | None
    shown_before: str  # the answer text earlier rounds streamed (checkpoints save it all)


StreamRound = Callable[[Sequence[ChatMessage], RoundRequest], Awaitable[StreamEnd]]


@dataclass(frozen=True)
class LoopTurn:
    """The turn as the loop needs it; `usage_for` words a round's ledger row."""

    conversation_id: int
    assistant_id: int
    request_id: str
    context: ToolContext
    prompt_budget: int
    usage_for: Callable[[CompletionResult, str], UsageEntry]
    stop: StopHandle | None = None  # a person may stop the turn, also while its tools run
    budget: CallBudget | None = None  # credits held for the turn: asked before each further round
    max_output_tokens: int = 0  # of each round, for the budget's estimate


@dataclass(frozen=True)
class LoopEnd:
    """The last round's end, its result carrying the whole answer text of every round."""

    end: StreamEnd
    rounds: int
    tools_used: tuple[str, ...]
    total: Usage  # of every round: what the turn cost (metrics, quotas); unknown only if never reported

    @property
    def credits_used(self) -> int | None:
        return self.total.credits_used


@dataclass(frozen=True)
class _Outcome:
    call: ToolCall
    result: ToolResult
    outcome: str  # ok | error | timeout | denied (| cancelled, only as a stored row)
    duration_ms: int


class _TurnClock:
    """The turn's time left, stopped while a person is asked to approve a call: that wait (up to
    TOOL_APPROVAL_TIMEOUT) is theirs, not the turn's, or a call approved late would get no time."""

    def __init__(self, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + seconds
        self._asking = 0  # approvals being waited for now (the calls of a round ask concurrently)
        self._stopped_at = 0.0

    def remaining(self) -> float:
        now = self._stopped_at if self._asking else self._loop.time()
        return self._deadline - now

    @contextlib.contextmanager
    def asking(self) -> Iterator[None]:
        if not self._asking:
            self._stopped_at = self._loop.time()
        self._asking += 1
        try:
            yield
        finally:
            self._asking -= 1
            if not self._asking:
                self._deadline += self._loop.time() - self._stopped_at


class ToolLoop:
    """Runs the rounds of a turn; one instance serves every turn of the process."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        ledger: Ledger,
        estimator: TokenEstimator,
        limits: ToolLimits,
        approver: Approver | None = None,
        events: ToolEvents | None = None,
    ) -> None:
        self._events = events
        self._sessions = sessions
        self._ledger = ledger
        self._estimator = estimator
        self._limits = limits
        self._approver = approver

    async def run(
        self,
        turn: LoopTurn,
        messages: Sequence[ChatMessage],
        tools: Sequence[Tool],
        sink: ReplySink,
        stream_round: StreamRound,
    ) -> LoopEnd:
        clock = _TurnClock(self._limits.turn_timeout)
        by_name = {t.spec.name: t for t in tools}
        specs = tuple(_wire_spec(t.spec) for t in tools)
        sent = list(messages)
        rounds_messages: list[ChatMessage] = []  # what the tool rounds added, stored on the reply
        shown: list[str] = []
        steps: dict[str, ToolStep] = {}
        used: dict[str, None] = {}
        total = Usage()
        round_no = 0
        end: StreamEnd | None = None
        while True:
            round_no += 1
            if end is not None and turn.budget is not None:
                # A further upstream call: the last one's cost is in the ledger; hold the next one's.
                refused = await turn.budget.extend(self._estimator.estimate(sent), turn.max_output_tokens)
                if refused is not None:
                    # No call: the turn ends on the last round's result, whose ledger row (keyed by
                    # its request id) the service writes again unchanged; the answer gets the line.
                    await _append_note(sink, refused, shown)
                    whole = replace(end.result, content="".join(shown))
                    return LoopEnd(replace(end, result=whole), round_no - 1, tuple(used), total)
            over = round_no > self._limits.max_rounds or clock.remaining() <= 0
            request = RoundRequest(
                request_id=turn.request_id if round_no == 1 else f"{turn.request_id}-{round_no}",
                tools=specs,
                # Past a limit the tools stay described (the history mentions them) but may not be called.
                tool_choice=("none" if over else "auto") if specs else None,
                shown_before="".join(shown),
            )
            began = time.monotonic()
            end = await stream_round(sent, request)
            log.debug("tool round %d streamed in %.0f ms", round_no, (time.monotonic() - began) * 1000)
            result = end.result
            total = _added(total, result.usage)
            shown.append(result.content)
            calls = result.tool_calls
            if over or not calls or not specs or end.status != MessageStatus.COMPLETE or end.stopped:
                whole = replace(result, content="".join(shown))
                return LoopEnd(replace(end, result=whole), round_no, tuple(used), total)
            # This round's row now; the last round's is written by the service with the answer.
            await self._ledger.usage_row(turn.usage_for(result, end.label))
            for call in calls:
                used.setdefault(call.name or "?", None)
            assistant = ChatMessage("assistant", result.content, tool_calls=calls)
            finished: list[_Outcome] = []
            running = self._run_round(turn, calls, by_name, sink, steps, clock, finished)
            round_began = time.monotonic()
            try:
                outcomes = await (running if turn.stop is None else unless_stopped(running, turn.stop))
            except Stopped as stopped:
                # Stopped while tools ran: the answer is what was shown; the calls are cancelled.
                await self._store_round(turn, round_no, None, _cut(calls, finished, round_began))
                whole = replace(result, content="".join(shown))
                end = StreamEnd(whole, MessageStatus.COMPLETE, STOPPED, None, stopped.request)
                return LoopEnd(end, round_no, tuple(used), total)
            except asyncio.CancelledError:
                # Cancelled (shutdown) while tools ran: end the reply as interrupted, like a cut stream.
                await self._store_round(turn, round_no, None, _cut(calls, finished, round_began))
                whole = replace(result, content="".join(shown))
                cut = StreamEnd(whole, MessageStatus.INTERRUPTED, "cancelled", NOTE_INTERRUPTED)
                return LoopEnd(cut, round_no, tuple(used), total)
            answers = [ChatMessage("tool", _bounded(o.result), tool_call_id=o.call.id) for o in outcomes]
            rounds_messages += [assistant, *answers]
            await self._store_round(turn, round_no, rounds_messages, outcomes)
            sent = trim_tool_results([*sent, assistant, *answers], turn.prompt_budget, self._estimator)

    async def _run_round(
        self,
        turn: LoopTurn,
        calls: Sequence[ToolCall],
        by_name: Mapping[str, Tool],
        sink: ReplySink,
        steps: dict[str, ToolStep],
        clock: _TurnClock,
        finished: list[_Outcome],
    ) -> list[_Outcome]:
        """The round's outcomes in call order; each is also added to `finished` as it ends, for
        the record of a round cut short."""
        for call in calls:
            steps[call.id] = ToolStep(call.id, call.name or "?", "in_progress")
        await _show(sink, steps)

        async def one(call: ToolCall) -> _Outcome:
            outcome = await self._run_call(turn.context, call, by_name, clock)
            status: StepStatus = "complete" if outcome.outcome == "ok" else "error"
            detail = outcome.result.detail if outcome.outcome in ("ok", "error") else outcome.outcome
            steps[call.id] = ToolStep(call.id, call.name or "?", status, detail)
            finished.append(outcome)
            await _show(sink, steps)
            return outcome

        return list(await asyncio.gather(*(one(c) for c in calls)))

    async def _run_call(
        self, context: ToolContext, call: ToolCall, by_name: Mapping[str, Tool], clock: _TurnClock
    ) -> _Outcome:
        began = time.monotonic()

        def done(result: ToolResult, outcome: str) -> _Outcome:
            seconds = time.monotonic() - began
            ms = round(seconds * 1000)
            log.info("tool call ended", extra={"tool": call.name, "outcome": outcome, "duration_ms": ms})
            if self._events is not None:
                self._events.tool_call_ended(
                    call.name if call.name in by_name else "unknown", outcome, seconds
                )
            return _Outcome(call, result, outcome, ms)

        tool = by_name.get(call.name)
        if tool is None:
            names = ", ".join(sorted(by_name)) or "none"
            return done(_error(f"there is no tool named {call.name!r}; the tools are: {names}"), "error")
        arguments, problem = _arguments(call.arguments)
        if arguments is None:
            return done(_error(f"the arguments are not a JSON object ({problem}); call it again"), "error")
        if tool.spec.needs_approval:
            # Waiting for a person is neither the tool's time nor the turn's: the approver bounds it.
            with clock.asking():
                approved = self._approver is not None and await self._approver.approve(
                    tool.spec, arguments, context
                )
            if not approved:
                return done(_error("the person did not approve this call, so it did not run"), "denied")
        timeout = max(0.0, min(self._limits.call_timeout, clock.remaining()))
        try:
            async with asyncio.timeout(timeout):
                result = await tool.run(arguments, context)
        except TimeoutError:
            return done(_error(f"the tool did not answer within {timeout:.0f} s"), "timeout")
        except Exception as exc:  # a broken tool is the model's problem to route around, not a crash
            log.warning("tool %s failed: %s", call.name, type(exc).__name__)
            log.debug("tool %s failure", call.name, exc_info=True)  # may quote the arguments
            return done(_error(f"the tool failed ({type(exc).__name__})"), "error")
        return done(result, "ok" if result.ok else "error")

    async def _store_round(
        self,
        turn: LoopTurn,
        round_no: int,
        exchange: Sequence[ChatMessage] | None,
        outcomes: Sequence[_Outcome],
    ) -> None:
        """This round's call rows, and the reply's exchange so far (None: a cut round adds none)."""
        rows = [
            ToolCallRow(
                message_id=turn.assistant_id,
                conversation_id=turn.conversation_id,
                round=round_no,
                tool=o.call.name or "?",
                arguments_sha256=hashlib.sha256(o.call.arguments.encode()).hexdigest(),
                duration_ms=o.duration_ms,
                outcome=o.outcome,
            )
            for o in outcomes
        ]
        try:
            async with self._sessions.begin() as session:
                stored = None if exchange is None else to_exchange(exchange)
                await store_tool_round(session, turn.assistant_id, stored, rows)
        except UNAVAILABLE as exc:
            # Not spooled: the answer itself still lands; only this round's record is lost.
            log.warning("could not store a tool round: %s", error_reason(exc))


def _cut(calls: Sequence[ToolCall], finished: Sequence[_Outcome], began: float) -> list[_Outcome]:
    """A round cut short (stop, shutdown): the calls that ended, and the others as cancelled."""
    ms = round((time.monotonic() - began) * 1000)
    cancelled = ToolResult("cancelled", ok=False)
    ended = [next((o for o in finished if o.call is c), None) for c in calls]  # ids may repeat
    return [o or _Outcome(c, cancelled, "cancelled", ms) for c, o in zip(calls, ended, strict=True)]


def _added(total: Usage, more: Usage) -> Usage:
    """The sum of two calls' usage; a value stays unknown (None) only while neither knows it."""
    values = {}
    for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "credits_used"):
        a, b = getattr(total, name), getattr(more, name)
        values[name] = None if a is None and b is None else (a or 0) + (b or 0)
    usd = (
        None
        if total.usd_spent is None and more.usd_spent is None
        else (total.usd_spent or 0) + (more.usd_spent or 0)
    )
    return Usage(**values, usd_spent=usd)


def _wire_spec(spec: ToolSpec) -> dict[str, Any]:
    function = {"name": spec.name, "description": spec.description, "parameters": dict(spec.parameters)}
    return {"type": "function", "function": function}


def _arguments(text: str) -> tuple[dict[str, Any] | None, str]:
    """The call's arguments as an object, or None and what is wrong with them."""
    if not text.strip():
        return {}, ""  # a call without parameters may come with no arguments text at all
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"invalid JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    return value, ""


def _error(message: str) -> ToolResult:
    return ToolResult(f"Error: {message}.", ok=False, detail=message[:80])


def _bounded(result: ToolResult) -> str:
    content = result.content
    if len(content) <= MAX_RESULT_CHARS:
        return content
    return content[:MAX_RESULT_CHARS] + f"\n[cut: {len(content) - MAX_RESULT_CHARS:,} more characters]"


async def _append_note(sink: ReplySink, note: str, shown: list[str]) -> None:
    """End the answer with `note` on a line of its own (the turn then finishes as usual)."""
    text = ("\n\n" if "".join(shown).strip() else "") + note
    await sink.append(text)
    shown.append(text)


async def _show(sink: ReplySink, steps: Mapping[str, ToolStep]) -> None:
    """Progress is a courtesy: a sink that fails to show it must not stop the tools."""
    try:
        await sink.tool_progress(tuple(steps.values()))
    except Exception as exc:
        log.warning("could not show tool progress: %s", type(exc).__name__)
