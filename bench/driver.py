"""Drives the bot like Slack does: signed Events API requests over HTTP, timed from this side."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from slack_sdk.signature import SignatureVerifier

from bench.botproc import SIGNING_SECRET

_event_ids = itertools.count(1)
T = TypeVar("T")


@dataclass
class Conversation:
    """One thread the benchmark starts; `tag` is in the question so upstream requests can be matched."""

    index: int
    team: str
    channel: str
    root_ts: str
    tag: str
    sent_at: float = float("nan")  # time.monotonic() just before the POST
    acked_at: float = float("nan")  # ... and when its HTTP response arrived
    ack_status: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ack_seconds(self) -> float:
        return self.acked_at - self.sent_at


def app_mention(conv: Conversation, text: str, ts: str, thread_ts: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "app_mention",
        "user": "U1",
        "text": f"<@UBOT> {text}",
        "ts": ts,
        "channel": conv.channel,
        "event_ts": ts,
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def thread_message(conv: Conversation, text: str, ts: str) -> dict[str, Any]:
    """A follow-up in a thread the bot takes part in (no mention: Slack sends `message` only)."""
    return {
        "type": "message",
        "user": "U1",
        "text": text,
        "ts": ts,
        "thread_ts": conv.root_ts,
        "channel": conv.channel,
        "channel_type": "channel",
        "event_ts": ts,
    }


class EventSender:
    """POSTs signed `event_callback` bodies to the bot's /slack/events and times the acknowledgement."""

    def __init__(self, base_url: str) -> None:
        self._verifier = SignatureVerifier(SIGNING_SECRET)
        # Slack opens many connections at once; no client-side pool queueing in the measured time.
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(10.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=50),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, conv: Conversation, event: dict[str, Any]) -> None:
        body = json.dumps(
            {
                "token": "legacy",
                "team_id": conv.team,
                "api_app_id": "ABENCH",
                "type": "event_callback",
                "event_id": f"EvB{next(_event_ids):09d}",
                "event_time": int(time.time()),
                "event": event,
            }
        )
        stamp = str(int(time.time()))
        headers = {
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": self._verifier.generate_signature(timestamp=stamp, body=body) or "",
            "Content-Type": "application/json",
        }
        conv.sent_at = time.monotonic()
        try:
            response = await self._http.post("/slack/events", content=body, headers=headers)
            conv.ack_status = response.status_code
        except httpx.HTTPError as exc:
            conv.ack_status = None
            conv.extra["ack_error"] = type(exc).__name__
        conv.acked_at = time.monotonic()


class DriverThread:
    """An event loop in its own thread that sends the events.

    The fakes run in the main loop and get busy under load; timing the acknowledgements from the same
    loop would add that loop's delays to the bot's. `call(coro)` runs a coroutine there and waits for it.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-driver", daemon=True)

    async def __aenter__(self) -> DriverThread:
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 10.0)
        self._loop.close()

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))


async def new_sender(base_url: str) -> EventSender:
    """An EventSender made inside the loop that will use it (run through `DriverThread.call`)."""
    return EventSender(base_url)


async def ramp(
    items: Sequence[Conversation], seconds: float, send: Callable[[Conversation], Coroutine[Any, Any, None]]
) -> None:
    """Start `send(item)` for each item evenly over `seconds` (all at once when 0); wait for all."""
    started = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    step = seconds / len(items) if items and seconds > 0 else 0.0
    for n, item in enumerate(items):
        delay = started + n * step - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(item)))
    await asyncio.gather(*tasks)


async def wait_until(condition: Callable[[], bool], within: float, period: float = 0.1) -> bool:
    """Poll `condition` until it holds or `within` seconds pass; returns whether it held."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(period)
    return True
