"""Slack's response_url endpoint on loopback: what the app sent back for a command or an action."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web


class ResponseUrl:
    """Slack's response_url endpoint on loopback: records what the app sent back for the command."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.idle_since: float | None = time.monotonic()  # None while a request is being received
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/commands/1234", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/commands/1234"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        self.idle_since = None
        try:
            self.received.append(await request.json())
        finally:
            self.idle_since = time.monotonic()
        self._arrived.set()
        return web.Response(text="ok")

    async def next_answer(self) -> dict[str, Any]:
        await asyncio.wait_for(self._arrived.wait(), timeout=5)
        return self.received[-1]
