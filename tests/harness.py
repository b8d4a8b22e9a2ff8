"""The real bot (BotRuntime) wired to the fake Slack and fake AI/ML API, driven by signed events."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx
from slack_sdk.signature import SignatureVerifier

from bot.app import BotRuntime
from bot.conversation.channel_settings import ChannelSettingsSource
from bot.settings import Settings
from tests.fakes.aimlapi import FakeAimlApi
from tests.fakes.slack_api import FakeMessage, FakeSlackApi, FakeUser

SIGNING_SECRET = "test-signing-secret"
_event_ids = itertools.count(1)


def signed_headers(
    body: str, *, secret: str = SIGNING_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    ts = str(timestamp if timestamp is not None else int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    assert signature is not None
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
        "Content-Type": "application/json",
    }


def make_settings(
    db_url: str,
    slack: FakeSlackApi,
    aiml: FakeAimlApi,
    *,
    keep_defaults: Sequence[str] = (),
    **overrides: Any,
) -> Settings:
    """Settings for the fakes; quicker than production's defaults except the `keep_defaults` named."""
    values: dict[str, Any] = {
        "slack_bot_token": "xoxb-test",
        "slack_signing_secret": SIGNING_SECRET,
        "slack_api_url": slack.api_url,
        "aimlapi_key": "test-key",
        "aimlapi_base_url": aiml.base_url,
        "database_url": db_url,
        "host": "127.0.0.1",
        "port": 0,
        "stream_update_interval": 0.2,
        "llm_read_timeout": 3.0,
        "shutdown_grace_seconds": 2.0,
        "log_format": "console",
        # The suite's older tests describe edit streaming; native and auto are asked for by name.
        "slack_streaming": "edits",
    }
    values.update(overrides)
    for name in keep_defaults:
        values.pop(name)
    return Settings(_env_file=None, **values)


class Watched(Protocol):
    """A fake the bot talks to: when it last finished a request (None while one is open)."""

    @property
    def idle_since(self) -> float | None: ...


# Bolt runs each listener in a task of this coroutine after acking the request (slack_bolt's
# listener/asyncio_runner.py); the renderer names its editing tasks "slack-reply-...".
_LISTENER_CORO = "run_ack_function_asynchronously"
_REPLY_TASK_PREFIX = "slack-reply-"


def _bot_work_running() -> bool:
    """A Bolt listener or a reply's editing task is still running in this event loop."""
    for task in asyncio.all_tasks():
        if task.done():
            continue
        if task.get_name().startswith(_REPLY_TASK_PREFIX):
            return True
        if getattr(task.get_coro(), "__name__", "") == _LISTENER_CORO:
            return True
    return False


async def settled(
    *watched: Watched,
    busy: Callable[[], bool] = lambda: False,
    quiet: float = 0.2,
    timeout: float = 30.0,
) -> None:
    """Wait until nothing is left to happen: no listener or reply task runs, `busy()` is false, and
    none of the `watched` fakes has had a request for `quiet` seconds. Then "nothing happened" and
    "everything happened" are both safe to assert; a slow wrong answer is still seen."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        marks = [w.idle_since for w in watched]
        quiet_enough = all(m is not None and now - m >= quiet for m in marks)
        if quiet_enough and not busy() and not _bot_work_running():
            return
        if now > deadline:
            raise AssertionError(f"the bot was still busy after {timeout:g}s")
        await asyncio.sleep(0.02)


class Bot:
    """One running bot plus an HTTP client that posts signed Events API requests to it."""

    def __init__(
        self,
        runtime: BotRuntime,
        http: httpx.AsyncClient,
        slack: FakeSlackApi,
        watched: Sequence[Watched] = (),
    ) -> None:
        self.runtime = runtime
        self.http = http
        self.slack = slack
        self._watched = (slack, *watched)

    async def send(
        self,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        retry_num: int | None = None,
        team: str = "T1",
    ) -> httpx.Response:
        sender = event.get("user")
        if isinstance(sender, str) and not event.get("bot_id"):
            # Whoever writes is a member Slack knows (users.info answers for them), an ordinary one
            # unless the test said otherwise; their name is their id, as the bot writes unknown ones.
            self.slack.users.setdefault(sender, FakeUser(real_name=sender))
        body = json.dumps(
            {
                "token": "legacy",
                "team_id": team,
                "api_app_id": "A1",
                "type": "event_callback",
                "event_id": event_id or f"Ev{next(_event_ids):08d}",
                "event_time": int(time.time()),
                "event": event,
            }
        )
        headers = signed_headers(body)
        if retry_num is not None:
            headers |= {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"}
        return await self.http.post("/slack/events", content=body, headers=headers)

    async def post_form(self, fields: dict[str, str]) -> httpx.Response:
        """A signed form POST to the events endpoint, as Slack sends commands and interactions."""
        body = urlencode(fields)
        headers = signed_headers(body) | {"Content-Type": "application/x-www-form-urlencoded"}
        return await self.http.post("/slack/events", content=body, headers=headers)

    async def command(
        self,
        command: str,
        text: str = "",
        *,
        user: str = "U1",
        channel: str = "C1",
        response_url: str = "http://127.0.0.1:9/unused",
        team: str = "T1",
        trigger_id: str = "1.2.3",
    ) -> httpx.Response:
        """A slash command (`/usage`, `/glm ...`) as Slack sends it."""
        return await self.post_form(
            {
                "token": "legacy",
                "team_id": team,
                "team_domain": "fake",
                "channel_id": channel,
                "channel_name": "channel",
                "user_id": user,
                "user_name": user.lower(),
                "command": command,
                "text": text,
                "api_app_id": "A1",
                "response_url": response_url,
                "trigger_id": trigger_id,
            }
        )

    async def interact(self, payload: dict[str, Any]) -> httpx.Response:
        """An interactivity payload (`block_actions`, `view_submission`, ...) as Slack sends it."""
        return await self.post_form({"payload": json.dumps(payload)})

    def replies(self, channel: str, thread_ts: str) -> list[FakeMessage]:
        """The bot's messages in a thread, oldest first."""
        return [m for m in self.slack.thread(channel, thread_ts) if m.bot_id == self.slack.bot_id]

    def answer(self, channel: str, thread_ts: str) -> str:
        return "".join(m.markdown for m in self.replies(channel, thread_ts))

    async def idle(self, timeout: float = 30.0) -> None:
        """Wait until the bot has done everything it will do: no turn is active, no listener or reply
        task runs, and the fakes have been quiet for a moment (events are acked before their
        listener runs, so "nothing happened yet" is not "nothing will happen")."""
        turns = self.runtime.turns
        await settled(*self._watched, busy=lambda: bool(turns and turns.active), timeout=timeout)


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def until(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    """`eventually` for an async condition (a database count)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def history(aiml: FakeAimlApi, index: int) -> list[str]:
    """What the model was sent in its `index`-th chat call, after the system prompt."""
    return [m["content"] for m in aiml.chat_requests[index].json["messages"][1:]]


@asynccontextmanager
async def running_bot(
    settings: Settings,
    slack: FakeSlackApi,
    aiml: FakeAimlApi | None = None,
    *,
    channel_settings: ChannelSettingsSource | None = None,
) -> AsyncIterator[Bot]:
    """The bot on `settings`; `Bot.idle` also waits for `aiml` to be quiet when it is given."""
    runtime = BotRuntime(settings, channel_settings=channel_settings)
    try:
        port = await runtime.start()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield Bot(runtime, http, slack, () if aiml is None else (aiml,))
    finally:
        await runtime.stop()


def mention(
    text: str, ts: str, *, channel: str = "C1", user: str = "U1", thread_ts: str | None = None
) -> dict[str, Any]:
    event = {
        "type": "app_mention",
        "user": user,
        "text": f"<@UBOT> {text}",
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def message(
    text: str,
    ts: str,
    *,
    channel: str = "C1",
    user: str = "U1",
    thread_ts: str | None = None,
    channel_type: str = "channel",
    **extra: Any,
) -> dict[str, Any]:
    event = {
        "type": "message",
        "user": user,
        "text": text,
        "ts": ts,
        "channel": channel,
        "channel_type": channel_type,
        "event_ts": ts,
        **extra,
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def agent_session_stopped(
    channel: str, thread_ts: str, *, user: str = "U1", streaming_message_ts: Sequence[str] = ()
) -> dict[str, Any]:
    """The event Slack sends when a person presses an agent session's stop control.

    Shape from docs.slack.dev/reference/events/agent_session_stopped: `streaming_message_ts` lists
    the app's streams Slack stopped (empty when none was active); team_id is on the envelope.
    """
    return {
        "type": "agent_session_stopped",
        "channel": channel,
        "thread_ts": thread_ts,
        "user": user,
        "streaming_message_ts": list(streaming_message_ts),
        "event_ts": f"{time.time():.6f}",
    }
