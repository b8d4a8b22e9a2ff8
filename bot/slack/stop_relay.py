"""Stop presses across replicas: a press that reaches a replica not streaming the answer is passed to
all replicas (PostgreSQL NOTIFY), and the one streaming it applies it as if pressed there.

The replica that streams the answer decides whether the person may stop it (it knows the asker) and
tells them privately when not, exactly as for a local press. SQLite runs one process: no relay.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.storage.db import UNAVAILABLE, error_reason
from bot.storage.signals import SignalHub, notify
from bot.storage.turn_places import thread_has_live_turn

log = logging.getLogger(__name__)

STOP_ASKED = "bot_stop_asked"


@dataclass(frozen=True)
class StopAsked:
    """A press as the replica that received it saw it; the streaming replica finds its turn by it."""

    team_id: str
    channel: str
    user_id: str
    message_ts: str = ""  # the button's message (any message of the reply)
    reply_id: str = ""  # the button's value: the question's ts
    thread_ts: str = ""  # agent_session_stopped: the thread, when Slack names no stream
    streams: tuple[str, ...] = ()  # agent_session_stopped: the streams Slack stopped


class StopRelay:
    """`forward` a press; `on_forwarded(handler)` to apply the presses other replicas forward."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], hub: SignalHub) -> None:
        self._sessions = sessions
        self._origin = uuid.uuid4().hex
        self._handler: Callable[[StopAsked], Coroutine[Any, Any, None]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        hub.subscribe(STOP_ASKED, self._received)

    def on_forwarded(self, handler: Callable[[StopAsked], Coroutine[Any, Any, None]]) -> None:
        self._handler = handler

    async def forward(self, asked: StopAsked) -> bool:
        """Pass the press to every replica; False when the database could not take it."""
        body = asdict(asked)
        body["origin"] = self._origin
        try:
            async with self._sessions.begin() as session:
                await notify(session, STOP_ASKED, json.dumps(body))
        except UNAVAILABLE as exc:
            log.warning("could not pass a stop to the other replicas: %s", error_reason(exc))
            return False
        return True

    async def thread_busy(self, team_id: str, channel: str, thread_ts: str) -> bool:
        """Some replica answers in this thread now (its turn moves the agent session when it ends)."""
        try:
            async with self._sessions.begin() as session:
                return await thread_has_live_turn(session, team_id, channel, thread_ts)
        except UNAVAILABLE as exc:
            log.warning("could not tell whether a thread is answered elsewhere: %s", error_reason(exc))
            return False

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)

    def _received(self, payload: str | None) -> None:
        if payload is None or self._handler is None:
            return  # a missed press is not replayed: the person presses again
        try:
            body = json.loads(payload)
            if body.pop("origin", None) == self._origin:
                return  # this replica looked already before forwarding
            body["streams"] = tuple(body.get("streams") or ())
            asked = StopAsked(**body)
        except (ValueError, TypeError):
            log.warning("ignored a malformed stop signal")
            return
        task = asyncio.create_task(self._handler(asked), name="stop-forwarded")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
