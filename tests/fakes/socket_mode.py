"""A fake Slack Socket Mode endpoint on loopback, attached to a running FakeSlackApi.

    slack = FakeSlackApi(); await slack.start()
    socket = FakeSocketMode(slack, app_token="xapp-test")      # or: async with FakeSocketMode(...) as socket:
    await socket.start()             # serves apps.connections.open on `slack` and the websocket
    ... start the bot with SLACK_APP_TOKEN=xapp-test, SLACK_API_URL=slack.api_url ...
    await socket.wait_connected()    # a client connected and got its `hello`
    envelope_id = await socket.send_event(event_callback(mention(...)))
    ack = await socket.wait_ack(envelope_id)        # Ack: envelope_id, payload, latency
    await socket.disconnect("refresh_requested")    # Slack asks the client to reconnect
    await socket.stop()

It follows what slack_sdk's Socket Mode clients expect (slack_sdk/socket_mode/*):
- `apps.connections.open` accepts only the app-level token (the bot token gets `not_allowed_token_type`,
  any other `invalid_auth`) and answers `{"ok": true, "url": "ws://127.0.0.1:PORT/link/?ticket=..."}`.
  A ticket opens one connection; a used or unknown ticket is refused at the HTTP upgrade.
- On connect the server sends `{"type": "hello", "num_connections": N, "debug_info": ..., "connection_info":
  {"app_id": ...}}`, then envelopes `{"envelope_id", "type", "payload", "accepts_response_payload",
  "retry_attempt", "retry_reason"}` (`events_api`), each to one connection (round robin), like Slack.
- The client acks with `{"envelope_id": ...}` (plus `payload` for commands and interactivity); acks are
  recorded in `acks`, anything else the client sends in `unexpected`.
- `disconnect` sends `{"type": "disconnect", "reason": ...}`: the client opens a new connection itself.
  `drop_connections` closes the websockets without warning, as a network failure or a Slack restart.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import WSMsgType, web

from tests.fakes.slack_api import FakeSlackApi

JsonDict = dict[str, Any]
DisconnectReason = Literal["warning", "refresh_requested", "link_disabled"]

_event_ids = itertools.count(1)


def event_callback(
    event: JsonDict, *, event_id: str | None = None, team: str = "T1", app_id: str = "A1"
) -> JsonDict:
    """The Events API body Slack wraps an event in (the same body HTTP mode receives)."""
    return {
        "token": "legacy",
        "team_id": team,
        "api_app_id": app_id,
        "type": "event_callback",
        "event_id": event_id or f"EvSock{next(_event_ids):06d}",
        "event_time": int(time.time()),
        "event": event,
        "authorizations": [{"team_id": team, "user_id": "UBOT", "is_bot": True}],
        "is_ext_shared_channel": False,
    }


@dataclass(frozen=True)
class Ack:
    """One acknowledgement the client sent; `latency` is seconds since its envelope was sent."""

    envelope_id: str
    payload: JsonDict | None
    received_at: float
    latency: float | None


@dataclass(eq=False)
class _Connection:
    ws: web.WebSocketResponse
    number: int
    opened_at: float = field(default_factory=time.monotonic)


class FakeSocketMode:
    """Slack's Socket Mode gateway for one app. See the module docstring."""

    def __init__(self, slack: FakeSlackApi, app_token: str = "xapp-test", app_id: str = "A1") -> None:
        self.slack = slack
        self.app_token = app_token
        self.app_id = app_id
        self.acks: list[Ack] = []
        self.unexpected: list[str] = []  # client messages that are not acks
        self.sent: list[JsonDict] = []  # every message sent to a client, hello included
        self.opened = 0  # websocket connections accepted so far
        self._tickets: set[str] = set()
        self._connections: list[_Connection] = []
        self._next_connection = 0
        self._sent_at: dict[str, float] = {}
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._port = 0

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/link/", self._link)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        self.slack.route(
            "apps.connections.open", self._connections_open, tokens={self.app_token: self.slack.team_id}
        )

    async def stop(self) -> None:
        await self.drop_connections()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeSocketMode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- scripting and inspection --------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Open websocket connections."""
        return len(self._connections)

    async def wait_connected(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until at least `count` connections are open and have been sent their `hello`."""
        await self._wait_for(lambda: len(self._connections) >= count, timeout, f"{count} connection(s)")

    async def wait_ack(self, envelope_id: str, timeout: float = 5.0) -> Ack:
        await self._wait_for(lambda: self.ack_for(envelope_id) is not None, timeout, f"ack {envelope_id}")
        ack = self.ack_for(envelope_id)
        assert ack is not None
        return ack

    def ack_for(self, envelope_id: str) -> Ack | None:
        return next((a for a in self.acks if a.envelope_id == envelope_id), None)

    async def send_event(self, body: JsonDict, *, retry_attempt: int = 0, retry_reason: str = "") -> str:
        """Deliver an Events API body (`event_callback(...)`) to one connection; returns the envelope id."""
        return await self.send_envelope(
            "events_api", body, retry_attempt=retry_attempt, retry_reason=retry_reason
        )

    async def send_envelope(
        self,
        type_: str,
        payload: JsonDict,
        *,
        accepts_response_payload: bool = False,
        retry_attempt: int = 0,
        retry_reason: str = "",
    ) -> str:
        """Any envelope (`events_api`, `slash_commands`, `interactive`); returns the envelope id."""
        if not self._connections:
            raise RuntimeError("no Socket Mode client is connected")
        envelope_id = str(uuid.uuid4())
        envelope: JsonDict = {
            "envelope_id": envelope_id,
            "type": type_,
            "payload": payload,
            "accepts_response_payload": accepts_response_payload,
        }
        if type_ == "events_api":
            envelope |= {"retry_attempt": retry_attempt, "retry_reason": retry_reason}
        connection = self._connections[self._next_connection % len(self._connections)]
        self._next_connection += 1
        self._sent_at[envelope_id] = time.monotonic()
        await self._send(connection, envelope)
        return envelope_id

    async def disconnect(self, reason: DisconnectReason = "refresh_requested") -> None:
        """Ask every connected client to reconnect, as Slack does every few hours."""
        for connection in list(self._connections):
            message = {"type": "disconnect", "reason": reason, "debug_info": {"host": self._host(connection)}}
            await self._send(connection, message)

    async def drop_connections(self) -> None:
        """Close every websocket from the server side (going away), without a `disconnect` first."""
        for connection in list(self._connections):
            await connection.ws.close(code=1001, message=b"server shutting down")

    # ---- Web API method ------------------------------------------------------------------------

    async def _connections_open(self, _params: JsonDict, _team: str) -> JsonDict:
        ticket = str(uuid.uuid4())
        self._tickets.add(ticket)
        return {"url": f"ws://127.0.0.1:{self._port}/link/?ticket={ticket}&app_id={self.app_id}"}

    # ---- websocket -----------------------------------------------------------------------------

    async def _link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.Response(status=401, text="invalid or used ticket")
        self._tickets.discard(ticket)
        ws = web.WebSocketResponse(autoping=True)  # answers the client's pings with pongs
        await ws.prepare(request)
        self.opened += 1
        connection = _Connection(ws, self.opened)
        await self._send(
            connection,
            {
                "type": "hello",
                "num_connections": len(self._connections) + 1,
                "debug_info": {
                    "host": self._host(connection),
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
                "connection_info": {"app_id": self.app_id},
            },
        )
        async with self._changed:
            self._connections.append(connection)
            self._changed.notify_all()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._received(str(msg.data))
        finally:
            async with self._changed:
                self._connections.remove(connection)
                self._changed.notify_all()
        return ws

    async def _received(self, raw: str) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("envelope_id"), str):
            self.unexpected.append(raw)
            return
        envelope_id = message["envelope_id"]
        now = time.monotonic()
        sent_at = self._sent_at.get(envelope_id)
        ack = Ack(envelope_id, message.get("payload"), now, None if sent_at is None else now - sent_at)
        async with self._changed:
            self.acks.append(ack)
            self._changed.notify_all()

    async def _send(self, connection: _Connection, message: JsonDict) -> None:
        self.sent.append(message)
        await connection.ws.send_str(json.dumps(message))

    async def _wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(condition)
        except TimeoutError:
            raise AssertionError(f"Socket Mode: no {what} within {timeout} s") from None

    def _host(self, connection: _Connection) -> str:
        return f"applink-fake-{connection.number}"
