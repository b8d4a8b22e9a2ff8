"""A loopback TCP proxy that a test can cut and restore: a database outage at the network boundary."""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

from sqlalchemy.engine import make_url


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self.up = True
        self.holed = False
        self.port = 0

    @classmethod
    def in_front_of(cls, database_url: str) -> TcpProxy:
        url = make_url(database_url)
        return cls(url.host or "127.0.0.1", url.port or 5432)

    def url_for(self, database_url: str) -> str:
        """`database_url` with its connections going through this proxy."""
        return make_url(database_url).set(port=self.port).render_as_string(hide_password=False)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.restore()
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Drop every open connection; new ones are closed at once until `restore`."""
        self.up = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.up = True
        if self.holed:
            self.holed = False
            for writer in list(self._writers):
                _both_ways(writer).resume_reading()
            for writer in self._held:
                writer.transport.abort()
            self._held.clear()

    def black_hole(self) -> None:
        """Hang instead of refusing: no byte moves on open connections, new ones are accepted and
        never answered (a dropped route or a frozen server), until `restore`."""
        self.holed = True
        for writer in list(self._writers):
            _both_ways(writer).pause_reading()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.holed:
            self._held.add(client_writer)
            return
        if not self.up:
            client_writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, server_writer))
        await asyncio.gather(
            self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer)
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()


def _both_ways(writer: asyncio.StreamWriter) -> asyncio.Transport:
    """The socket's transport, which also reads (StreamWriter types it as write-only)."""
    return cast(asyncio.Transport, writer.transport)
