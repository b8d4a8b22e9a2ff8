"""`python -m bot chat`: a terminal conversation through the same service as Slack, stored alike."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from bot.app import core_services
from bot.conversation.ports import ReplyPart, ReplySummary
from bot.conversation.service import Turn
from bot.settings import Settings
from bot.storage.conversations import ConversationKey
from bot.storage.models import ConversationKind


class TerminalSink:
    """Prints the answer as it streams; notes and metadata go on their own dimmed line."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._started = False

    @property
    def refs(self) -> Sequence[str]:
        return ()

    @property
    def parts(self) -> Sequence[ReplyPart]:
        return ()

    async def thinking(self) -> None:
        self._write("\x1b[2m(thinking…)\x1b[0m ")

    async def append(self, text: str) -> None:
        self._started = True
        self._write(text)

    async def finish(self, summary: ReplySummary) -> None:
        details = [summary.model or "", _tokens(summary)]
        if summary.note:
            details.insert(0, summary.note)
        self._write("\n\x1b[2m" + " · ".join(d for d in details if d) + "\x1b[0m\n")

    async def fail(self, note: str) -> None:
        self._write(f"\n\x1b[2m[{note}]\x1b[0m\n")

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


def _tokens(summary: ReplySummary) -> str:
    if summary.prompt_tokens is None:
        return ""
    credits = f", {summary.credits_used:,} credits" if summary.credits_used is not None else ""
    return f"{summary.prompt_tokens:,} in / {summary.completion_tokens or 0:,} out{credits}"


async def _read_line(reader: asyncio.StreamReader) -> str | None:
    raw = await reader.readline()
    return raw.decode("utf-8", "replace").rstrip("\n") if raw else None


async def chat_command(settings: Settings) -> int:
    settings.require("aimlapi_key")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    key = ConversationKey("terminal", "terminal", f"{time.time():.6f}")
    print(f"Talking to {settings.aimlapi_model}. Ctrl-C stops an answer; Ctrl-D or /quit leaves.")
    async with core_services(settings) as core:
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
                turn = Turn(key, ConversationKind.TERMINAL, line, "terminal")
                print("bot> ", end="", flush=True)
                current = asyncio.ensure_future(core.service.reply(turn, TerminalSink(sys.stdout)))
                try:
                    await current
                except asyncio.CancelledError:
                    if not current.cancelled():
                        raise
        finally:
            loop.remove_signal_handler(signal.SIGINT)
