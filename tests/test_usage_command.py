"""`/usage` through a signed slash-command request: an ephemeral answer with the caller's own numbers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.slack.usage_command import UNAVAILABLE, register_usage_command
from bot.storage.db import create_engine, session_factory
from bot.storage.models import UsageRecord
from tests.fakes.slack_api import FakeSlackApi
from tests.harness import settled

SECRET = "signing-secret"
TOKEN = "xoxb-test"
TZ = ZoneInfo("Europe/Berlin")


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


@pytest.fixture
async def response_url() -> AsyncIterator[ResponseUrl]:
    endpoint = ResponseUrl()
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


def bolt_app(slack: FakeSlackApi, sessions: async_sessionmaker[AsyncSession]) -> AsyncApp:
    app = AsyncApp(client=AsyncWebClient(base_url=slack.api_url, token=TOKEN), signing_secret=SECRET)
    register_usage_command(app, sessions, TZ)
    return app


def signed_command(user_id: str, response_url: str, *, secret: str = SECRET) -> AsyncBoltRequest:
    body = urlencode(
        {
            "token": "legacy-verification-token",
            "team_id": "T1",
            "team_domain": "fake",
            "channel_id": "C1",
            "channel_name": "general",
            "user_id": user_id,
            "user_name": "someone",
            "command": "/usage",
            "text": "",
            "api_app_id": "A1",
            "response_url": response_url,
            "trigger_id": "1.2.3",
        }
    )
    timestamp = str(int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    headers: dict[str, str | Sequence[str]] = {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": timestamp,
        "x-slack-signature": signature,
    }
    return AsyncBoltRequest(body=body, headers=headers)


async def add_usage(sessions: async_sessionmaker[AsyncSession], user_id: str, credits: int) -> None:
    async with sessions() as session:
        session.add(
            UsageRecord(
                team_id="T1",
                channel_id="C1",
                user_id=user_id,
                model_requested="zhipu/glm-5",
                prompt_tokens=1_200,
                completion_tokens=300,
                credits_used=credits,
                status="complete",
                created_at=datetime.now(UTC),
            )
        )
        await session.commit()


def field_texts(answer: dict[str, Any]) -> list[str]:
    return [field["text"] for block in answer["blocks"] for field in block.get("fields", [])]


async def test_usage_answers_the_caller_privately_with_their_own_numbers(
    sessions: async_sessionmaker[AsyncSession], slack: FakeSlackApi, response_url: ResponseUrl
) -> None:
    await add_usage(sessions, "UALICE", credits=1_234_567)
    await add_usage(sessions, "UBOB", credits=999_999)
    app = bolt_app(slack, sessions)

    ack = await app.async_dispatch(signed_command("UALICE", response_url.url))
    answer = await response_url.next_answer()

    assert ack.status == 200
    assert answer["response_type"] == "ephemeral"
    today, week, month = field_texts(answer)
    assert today == "*Today*\n1 request\n1,500 tokens (1,200 in · 300 out)\n1,234,567 credits ($0.62)"
    assert week.startswith("*Last 7 days*\n1 request")
    assert month.startswith("*This month*\n1 request")
    assert "999,999" not in str(answer)
    assert "Europe/Berlin" in str(answer["blocks"])


async def test_usage_for_someone_who_never_used_the_bot_says_so(
    sessions: async_sessionmaker[AsyncSession], slack: FakeSlackApi, response_url: ResponseUrl
) -> None:
    app = bolt_app(slack, sessions)

    await app.async_dispatch(signed_command("UNEW", response_url.url))
    answer = await response_url.next_answer()

    assert answer["response_type"] == "ephemeral"
    assert answer["text"] == "You have no recorded usage in the last 7 days or this month."


async def test_a_badly_signed_usage_request_is_rejected_and_answers_nothing(
    sessions: async_sessionmaker[AsyncSession], slack: FakeSlackApi, response_url: ResponseUrl
) -> None:
    app = bolt_app(slack, sessions)

    response = await app.async_dispatch(signed_command("UALICE", response_url.url, secret="wrong"))
    await settled(response_url, slack)

    assert response.status == 401
    assert response_url.received == []
    assert slack.calls == []


async def test_usage_apologises_when_the_database_is_not_usable(
    empty_db_url: str, slack: FakeSlackApi, response_url: ResponseUrl
) -> None:
    engine = create_engine(empty_db_url)  # no tables: every query fails
    try:
        app = bolt_app(slack, session_factory(engine))

        ack = await app.async_dispatch(signed_command("UALICE", response_url.url))
        answer = await response_url.next_answer()
    finally:
        await engine.dispose()

    assert ack.status == 200
    assert answer == {"text": UNAVAILABLE, "response_type": "ephemeral", "replace_original": False}
