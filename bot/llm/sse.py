"""Server-sent events of a streamed chat completion, parsed line by line into typed events.

No I/O: the client cuts the body into lines with a `LineSplitter` and feeds an `SseDecoder` those lines.
OpenAI-compatible APIs send each chunk as one `data:` line, passed on at once; the SSE spec also lets
an event's data span several `data:` lines up to a blank line, and those are joined as the spec says.
Comments (`: keep-alive`), blank lines, other SSE fields and data that is not a JSON object are
skipped (logged at DEBUG), so a noisy proxy cannot break a stream.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from bot.llm.types import Delta, ToolCall, Usage

logger = logging.getLogger(__name__)
# One completion chunk is a few kB; a megabyte of data with no end is a broken stream, not a chunk.
MAX_EVENT_CHARS = 1_000_000


@dataclass(frozen=True)
class ToolCallFragment:
    """One piece of a streamed tool call: `delta.tool_calls[i]`. The piece that opens a call has its
    `id` and function `name`; later pieces of the same `index` add `arguments` text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class ChunkEvent:
    """One `chat.completion.chunk`: the first choice's delta plus whatever metadata it carried."""

    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    model: str | None = None
    usage: Usage | None = None
    tool_calls: tuple[ToolCallFragment, ...] = ()


@dataclass(frozen=True)
class DoneEvent:
    """`data: [DONE]`: the stream is complete."""


@dataclass(frozen=True)
class ErrorEvent:
    """An error object sent inside a 200 stream (`{"error": {...}}` or AI/ML's `statusCode` shape)."""

    body: str
    status: int | None = None


SseEvent = ChunkEvent | DoneEvent | ErrorEvent

_LINE_END = re.compile(r"\r\n|\r|\n")  # SSE's three line ends; not str.splitlines' other breaks


class LineSplitter:
    """Bytes of the body in, whole lines out: every line one read from the connection completed.

    The client takes each read's lines together (rather than line by line, as `aiter_lines` gives
    them) so that chunks that arrived together wake the consumer once. A line ends at CRLF, LF or
    CR (the SSE spec); a CR at the end of a read may be half of a CRLF, so it waits for the next.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._rest = ""

    def feed(self, data: bytes) -> list[str]:
        text = self._rest + self._decoder.decode(data)
        held = "\r" if text.endswith("\r") else ""
        lines = _LINE_END.split(text[: len(text) - len(held)])
        self._rest = lines.pop() + held
        return lines

    def end(self) -> list[str]:
        """The last line, when the body ended without a line end."""
        rest, self._rest = self._rest + self._decoder.decode(b"", final=True), ""
        rest = rest.removesuffix("\r")
        return [rest] if rest else []


class StreamAccumulator:
    """Folds chunk events into the answer so far: content and reasoning apart, finish, usage, model."""

    def __init__(self) -> None:
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self.finish_reason: str | None = None
        self.usage = Usage()
        self.model: str | None = None
        self._calls: dict[int, tuple[str | None, str | None, list[str]]] = {}

    @property
    def content(self) -> str:
        return "".join(self._content)

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The calls assembled so far, by stream index; a call the stream never named has name ""."""
        return tuple(
            ToolCall(id=call_id or f"call_{index}", name=name or "", arguments="".join(arguments))
            for index, (call_id, name, arguments) in sorted(self._calls.items())
        )

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    def apply(self, event: ChunkEvent) -> Delta | None:
        """Take in one chunk; the delta to pass on, or None if it carried no text."""
        if event.model:
            self.model = event.model
        if event.usage is not None:
            self.usage = self.usage.merged(event.usage)  # usage and meta.usage may come apart
        if event.finish_reason:
            self.finish_reason = event.finish_reason
        if event.content:
            self._content.append(event.content)
        if event.reasoning:
            self._reasoning.append(event.reasoning)
        for fragment in event.tool_calls:
            self._add_fragment(fragment)
        if not event.content and not event.reasoning:
            return None
        return Delta(content=event.content, reasoning=event.reasoning)

    def _add_fragment(self, fragment: ToolCallFragment) -> None:
        # The id and name come whole with the call's first piece (some servers repeat them on every
        # piece: the first wins); the arguments are the concatenation of every piece's text.
        call_id, name, arguments = self._calls.get(fragment.index, (None, None, []))
        arguments.append(fragment.arguments)
        self._calls[fragment.index] = (call_id or fragment.id, name or fragment.name, arguments)


class SseDecoder:
    """SSE lines in, events out: `feed` each line, then `end` when the body ends.

    A `data:` line that holds a whole JSON value (or `[DONE]`) is an event at once. One that does
    not starts data that continues over the next `data:` lines, joined with newlines, until they
    parse or a blank line ends the event. Unparsable data followed, without a blank line, by a line
    that is a whole chunk on its own (not indented, so not part of pretty-printed JSON) is junk and
    dropped, so one bad line costs no more than itself.
    """

    def __init__(self) -> None:
        self._data: list[str] = []
        self._waiting = 0  # characters of data waiting for the rest of their event

    def feed(self, line: str) -> SseEvent | None:
        if not line:
            return self.end()
        if not line.startswith("data:"):
            return None  # ": comment", "event:"/"id:"/"retry:" fields, or junk
        value = line[5:].removeprefix(" ")
        if self._data:
            complete, event = _parse_data("\n".join([*self._data, value]).strip())
            if not complete and value.startswith(("{", "[DONE]")):
                complete, event = _parse_data(value.strip())
                if complete:
                    logger.debug("skipping SSE data that is not JSON: %.200r", "\n".join(self._data))
        else:
            complete, event = _parse_data(value.strip())
        if complete:
            self._data.clear()
            self._waiting = 0
        elif self._waiting + len(value) > MAX_EVENT_CHARS:
            # Data that never completes (no blank line, no parsable JSON) must not grow without bound.
            logger.warning("dropping %d characters of SSE data that never formed an event", self._waiting)
            self._data.clear()
            self._waiting = 0
        else:
            self._data.append(value)
            self._waiting += len(value)
        return event

    def end(self) -> SseEvent | None:
        """The event of data still waiting for its end (a body that ended without a blank line)."""
        if not self._data:
            return None
        payload = "\n".join(self._data).strip()
        self._data.clear()
        complete, event = _parse_data(payload)
        if not complete:
            logger.debug("skipping SSE data that is not JSON: %.200r", payload)
        return event


def iter_events(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Every event in `lines`, in order (convenience for whole bodies and tests)."""
    decoder = SseDecoder()
    for line in lines:
        event = decoder.feed(line)
        if event is not None:
            yield event
    event = decoder.end()
    if event is not None:
        yield event


def _parse_data(payload: str) -> tuple[bool, SseEvent | None]:
    """(whether `payload` is a whole JSON value or `[DONE]`, the event it carries if any)."""
    if payload == "[DONE]":
        return True, DoneEvent()
    try:
        data = json.loads(payload)
    except ValueError:
        return False, None
    if not isinstance(data, dict):
        logger.debug("skipping SSE data that is not a JSON object: %.200r", payload)
        return True, None
    return True, parse_chunk(data, raw=payload)


def parse_chunk(data: Mapping[str, Any], *, raw: str = "") -> ChunkEvent | ErrorEvent:
    """Read one decoded chunk; tolerant of missing, null or empty `choices`, `delta` and fields."""
    error = data.get("error")
    if error or ("statusCode" in data and "choices" not in data):
        nested = error if isinstance(error, Mapping) else {}
        status = _count(data.get("statusCode")) or _count(nested.get("status")) or _count(nested.get("code"))
        return ErrorEvent(body=raw or json.dumps(data), status=status)
    content = reasoning = ""
    finish_reason: str | None = None
    fragments: tuple[ToolCallFragment, ...] = ()
    choice = _first_choice(data.get("choices"))
    if choice is not None:
        delta = choice.get("delta") or choice.get("message") or {}
        if isinstance(delta, Mapping):
            content = _text(delta.get("content"))
            # `reasoning_content` is AI/ML's and Z.ai's name; some OpenAI-compatible routers say `reasoning`
            reasoning = _text(delta.get("reasoning_content")) or _text(delta.get("reasoning"))
            fragments = _fragments(delta.get("tool_calls"))
        finish = choice.get("finish_reason")
        finish_reason = finish if isinstance(finish, str) and finish else None
    model = data.get("model")
    return ChunkEvent(
        content=content,
        reasoning=reasoning,
        finish_reason=finish_reason,
        model=model if isinstance(model, str) and model else None,
        usage=parse_usage(data),
        tool_calls=fragments,
    )


def _fragments(value: object) -> tuple[ToolCallFragment, ...]:
    """`delta.tool_calls` pieces; a piece without a usable index is the list position (a whole
    message's `tool_calls`, which carry none)."""
    if not isinstance(value, list):
        return ()
    fragments = []
    for position, item in enumerate(value):
        if not isinstance(item, Mapping):
            continue
        index = item.get("index")
        function = _mapping(item.get("function"))
        call_id, name = _text(item.get("id")), _text(function.get("name"))
        arguments = function.get("arguments")
        if isinstance(arguments, Mapping):  # a server that sends the object rather than its JSON text
            arguments = json.dumps(arguments)
        fragments.append(
            ToolCallFragment(
                index=index if isinstance(index, int) and not isinstance(index, bool) else position,
                id=call_id or None,
                name=name or None,
                arguments=_text(arguments),
            )
        )
    return tuple(fragments)


def parse_usage(data: Mapping[str, Any]) -> Usage | None:
    """`usage` token counts and `meta.usage` cost of a chunk, or None if it carries neither."""
    usage = _mapping(data.get("usage"))
    meta = _mapping(_mapping(data.get("meta")).get("usage"))
    if not usage and not meta:
        return None
    result = Usage(
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        cached_tokens=_count(_mapping(usage.get("prompt_tokens_details")).get("cached_tokens")),
        reasoning_tokens=_count(_mapping(usage.get("completion_tokens_details")).get("reasoning_tokens")),
        credits_used=_count(meta.get("credits_used")),
        usd_spent=_number(meta.get("usd_spent")),
    )
    return None if result == Usage() else result


def _first_choice(choices: object) -> Mapping[str, Any] | None:
    if not isinstance(choices, list):
        return None
    candidates = [c for c in choices if isinstance(c, Mapping)]
    for choice in candidates:
        if choice.get("index", 0) == 0:
            return choice
    return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _number(value: object) -> float | None:
    """A finite, non-negative JSON number (booleans are not numbers), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _count(value: object) -> int | None:
    """A whole count from JSON (some servers send 12.0 for 12), else None."""
    number = _number(value)
    return None if number is None else round(number)
