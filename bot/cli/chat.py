"""`python -m bot chat`: a terminal conversation through the same service as Slack, stored alike."""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from bot.app import admission_pipeline, core_services, quota_gate
from bot.conversation.admission import Arrival
from bot.conversation.keys import ConversationKey, ConversationKind
from bot.conversation.person import Person
from bot.conversation.ports import ReplyPart, ReplySummary, ToolStep
from bot.llm.types import ChatMessage
from bot.settings import Settings

# The operator at the terminal: the bot's own console, never refused by access rules.
OPERATOR = Person(user_id="terminal", is_admin=True, name="terminal")


class TerminalSink:
    """Prints the answer as it streams; notes and metadata go on their own dimmed line."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._started = False
        self._shown_steps: set[str] = set()

    @property
    def refs(self) -> Sequence[str]:
        return ()

    @property
    def parts(self) -> Sequence[ReplyPart]:
        return ()

    async def start(self) -> None:
        """Nothing to post: the prompt line already shows that an answer comes."""

    async def release(self) -> None:
        """Nothing to let go of: one terminal has no replicas to hand a turn to."""

    async def thinking(self) -> None:
        self._write("\x1b[2m(thinking…)\x1b[0m ")

    async def tool_progress(self, steps: Sequence[ToolStep]) -> None:
        """One dimmed line per call as it ends (starts are too brief to be worth a line)."""
        for step in steps:
            if step.status in ("complete", "error") and step.call_id not in self._shown_steps:
                self._shown_steps.add(step.call_id)
                detail = f": {step.detail}" if step.detail else ""
                self._write(f"\x1b[2m[{step.name} {step.status}{detail}]\x1b[0m\n")

    async def append(self, text: str) -> None:
        self._started = True
        self._write(text)

    async def finish(self, summary: ReplySummary) -> None:
        details = [summary.model or "", _tokens(summary)]
        if summary.tools_used:
            details.append("tools: " + ", ".join(summary.tools_used))
        if summary.note:
            details.insert(0, summary.note)
        self._write("\n\x1b[2m" + " · ".join(d for d in details if d) + "\x1b[0m\n")

    async def fail(self, note: str) -> None:
        self._write(f"\n\x1b[2m[{note}]\x1b[0m\n")

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


class TerminalSurface:
    """The domain's `Surface` for the terminal: plain text in, the sink above out."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    async def person(self, arrival: Arrival) -> Person:  # noqa: ARG002
        return OPERATOR

    def reply_to(self, arrival: Arrival, placeholder: str | None = None) -> TerminalSink:  # noqa: ARG002
        return TerminalSink(self._out)

    async def prompt_text(self, arrival: Arrival) -> str:
        return arrival.text

    async def thread_context(self, arrival: Arrival, reply_refs: Sequence[str]) -> Sequence[ChatMessage]:  # noqa: ARG002
        return ()

    async def show_waiting(self, arrival: Arrival) -> None:
        """One line at a time: nothing ever waits."""

    async def situation(self, arrival: Arrival, question: str, *, new_thread: bool) -> Sequence[str]:  # noqa: ARG002
        return ()

    async def tell(self, arrival: Arrival, note: str, *, in_thread: bool) -> None:  # noqa: ARG002
        self._out.write(f"\x1b[2m[{note}]\x1b[0m\n")
        self._out.flush()


def _tokens(summary: ReplySummary) -> str:
    if summary.prompt_tokens is None:
        return ""
    credits = f", {summary.credits_used:,} credits" if summary.credits_used is not None else ""
    return f"{summary.prompt_tokens:,} in / {summary.completion_tokens or 0:,} out{credits}"


def terminal_arrival(key: ConversationKey, line: str, *, number: int) -> Arrival:
    """A line typed at the terminal, as an arrival: the session's n-th message, always addressed."""
    message = f"{key.thread_ts}-{number}"
    return Arrival(
        event_id=f"terminal:{message}",
        key=key,
        kind=ConversationKind.TERMINAL,
        user_id=OPERATOR.user_id,
        message_ts=message,
        text=line,
        addressed=True,
    )


async def _read_line(reader: asyncio.StreamReader) -> str | None:
    raw = await reader.readline()
    return raw.decode("utf-8", "replace").rstrip("\n") if raw else None


async def chat_command(settings: Settings) -> int:
    settings.require("aimlapi_key")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    session_ts = f"{time.time():.6f}"
    key = ConversationKey("terminal", "terminal", session_ts)
    numbers = itertools.count(1)
    print(f"Talking to {settings.aimlapi_model}. Ctrl-C stops an answer; Ctrl-D or /quit leaves.")
    async with core_services(settings) as core:
        turns = admission_pipeline(settings, core, quota=quota_gate(settings, core))
        surface = TerminalSurface(sys.stdout)
        current: asyncio.Task[object] | None = None

        def on_interrupt() -> None:
            if current is not None and not current.done():
                current.cancel()
            else:
                reader.feed_eof()

        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        try:
            while True:
                print("\nyou> ", end="", flush=True)
                line = await _read_line(reader)
                if line is None or line.strip() == "/quit":
                    print()
                    return 0
                if not line.strip():
                    continue
                print("bot> ", end="", flush=True)
                arrival = terminal_arrival(key, line, number=next(numbers))
                current = asyncio.ensure_future(turns.handle(arrival, surface))
                try:
                    await current
                except asyncio.CancelledError:
                    if not current.cancelled():
                        raise
        finally:
            loop.remove_signal_handler(signal.SIGINT)
