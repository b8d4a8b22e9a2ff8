"""The small interfaces the conversation domain talks to: where a reply goes, and the model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

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
    ) -> ChatStreamLike: ...


class ReplyNotShown(Exception):
    """The reply could not be shown at all (its placeholder never landed): nothing was answered."""
