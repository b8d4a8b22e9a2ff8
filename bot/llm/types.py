"""Plain values crossing the LLM client's boundary: messages in, deltas and a completion result out."""

from __future__ import annotations

from dataclasses import dataclass, fields

ROLES = frozenset({"system", "user", "assistant", "tool"})


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asked for; `arguments` is the JSON text as streamed (maybe broken)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    """One message of the conversation sent upstream.

    An assistant message may carry the `tool_calls` it made; a "tool" message answers one of them
    (`tool_call_id`)."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {sorted(ROLES)}, not {self.role!r}")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message, and only a tool message, answers a tool_call_id")


@dataclass(frozen=True)
class Delta:
    """One streamed piece of the answer; `reasoning` is the model's thinking, never answer text."""

    content: str = ""
    reasoning: str = ""


@dataclass(frozen=True)
class Usage:
    """Token and cost accounting of one completion. Unknown values are None, never 0."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    credits_used: int | None = None
    usd_spent: float | None = None

    def merged(self, newer: Usage) -> Usage:
        """This usage updated with every value `newer` knows (streams may split usage over chunks)."""
        values = {f.name: getattr(newer, f.name) for f in fields(self)}
        return Usage(
            **{name: getattr(self, name) if value is None else value for name, value in values.items()}
        )


@dataclass(frozen=True)
class CompletionResult:
    """What one streamed completion produced, complete or not.

    `ttft_ms` is the time from the start of the call (retries included) to the first content or
    reasoning token; `duration_ms` runs to the end of the stream (or to now while it is still open).
    """

    content: str
    reasoning: str
    finish_reason: str | None
    usage: Usage
    model: str | None
    inference_id: str | None
    client_request_id: str
    ttft_ms: int | None
    duration_ms: int
    tool_calls: tuple[ToolCall, ...] = ()  # complete calls, in the order of their stream index
