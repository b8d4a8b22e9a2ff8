"""The fake MCP server (tests/fakes/mcp_server.py) as a subprocess on a loopback port: start it, kill
it, start it again on the same port, as a real server that goes away and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).with_name("mcp_server.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stdio_command() -> tuple[str, list[str]]:
    """The command and arguments of the stdio variant, for a config file."""
    return sys.executable, [str(SCRIPT), "stdio"]


class McpHttpServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def launch(self) -> None:
        """Start the process and return at once (it takes seconds to listen)."""
        assert self._process is None
        self._process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "http", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    async def start(self, timeout: float = 60.0) -> None:
        """Start it and wait until it accepts connections."""
        self.launch()
        deadline = time.monotonic() + timeout
        while not self._listening():
            assert self._process is not None and self._process.poll() is None, "the fake MCP server exited"
            if time.monotonic() > deadline:
                raise AssertionError(f"the fake MCP server did not listen within {timeout:g}s")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """Kill it as a crash would (no goodbye to its clients) and reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        await asyncio.to_thread(process.wait, 10)

    def _listening(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True
        return False
