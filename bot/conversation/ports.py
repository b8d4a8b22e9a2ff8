"""The small interfaces the conversation domain talks to: where a reply goes, and the model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol

from bot.llm.types import ChatMessage, CompletionResult, Delta


@dataclass(frozen=True)
class ReplySummary:
    """What a finished reply shows besides its answer text (metadata, never part of the answer)."""

    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    credits_used: int | None
    finish_reason: str | None
    note: str | None = None  # e.g. "the answer was cut off at the length limit"
    tools_used: tuple[str, ...] = ()  # names of the tools the model called, first use first


StepStatus = Literal["pending", "in_progress", "complete", "error"]


@dataclass(frozen=True)
class ToolStep:
    """One tool call of a turn as people watching see it (never its arguments or result)."""

    call_id: str
    name: str
    status: StepStatus
    detail: str | None = None  # a short line, e.g. "3 messages read", "timed out"


@dataclass(frozen=True)
class ReplyPart:
    """One message of a reply split over several: where its text begins in the whole answer.

    A message may open with a reopened code fence (`reopen`) that is not part of the answer; `limit`
    is the size the sink allows a message now (it shrinks when Slack refuses a long one), so a
    recovery can cut the last message where the sink would have.
    """

    ref: str
    start: int
    reopen: str = ""
    limit: int | None = None


class ReplySink(Protocol):
    """Where one assistant reply is rendered as it streams: Slack message edits, or a terminal.

    `append` gets content deltas in order; `thinking` is called while the model only reasons.
    Exactly one of `finish` / `fail` ends the reply, and after it the sink's text is final.
    """

    @property
    def refs(self) -> Sequence[str]:
        """Identifiers of the messages showing this reply so far (Slack ts), oldest first."""
        ...

    @property
    def parts(self) -> Sequence[ReplyPart]:
        """Where each message of `refs` begins in the answer (empty when the sink does not split)."""
        ...

    async def thinking(self) -> None: ...

    async def append(self, text: str) -> None: ...

    async def tool_progress(self, steps: Sequence[ToolStep]) -> None:
        """Every tool call of the turn so far with its status; called as they start and end."""
        ...

    async def finish(self, summary: ReplySummary) -> None: ...

    async def fail(self, note: str) -> None:
        """End the reply with what was appended so far plus a short human note."""
        ...


class ChatStreamLike(Protocol):
    """One streaming completion: iterate deltas, then read what was received (also after errors)."""

    async def __aenter__(self) -> ChatStreamLike: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def __aiter__(self) -> AsyncIterator[Delta]: ...

    def result(self) -> CompletionResult: ...


class ChatModel(Protocol):
    """The model the conversation talks to (bot.llm.AimlClient, or a scripted fake)."""

    model: str  # the default model, used when a turn names none

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int | None = None,
        request_id: str | None = None,
        model: str | None = None,
        tools: Sequence[Mapping[str, Any]] = (),
        tool_choice: str | None = None,
        parallel_tool_calls: bool | None = None,
    ) -> ChatStreamLike: ...


class CallBudget(Protocol):
    """The credits held for one turn's upstream calls (bot.conversation.quota_gate.HeldCredits).

    Admission holds an estimate for the first call; a turn that calls the model again (a tool
    round, a summary sized by its transcript) asks for each further call first, so a person cannot
    run past a hard limit by more than one call's estimate.
    """

    async def extend(self, prompt_tokens: int, max_output_tokens: int) -> str | None:
        """Hold credits for the next call instead of the last one (whose cost the ledger now has).
        None: make the call. Else a hard limit is reached: do not call; the line says which."""
        ...

    def hand_over(self) -> int | None:
        """The id of what is held now, for the turn's last ledger row to drop in its own transaction
        (from then on the row's reported cost counts instead); None when nothing is held. The
        turn's end still settles, but has no hold left to drop."""
        ...


class ReplyNotShown(Exception):
    """The reply could not be shown at all (its placeholder never landed): nothing was answered."""
