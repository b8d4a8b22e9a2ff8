"""`/usage` through a signed slash-command request: an ephemeral answer with the caller's own numbers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.slack.usage_command import UNAVAILABLE, register_usage_command
from bot.storage.db import create_engine, session_factory
from bot.storage.models import UsageRecord
from tests.fakes.aimlapi import FakeAimlApi
from tests.fakes.response_url import ResponseUrl
from tests.fakes.slack_api import FakeSlackApi, FakeUser
from tests.harness import Bot, make_settings, running_bot, settled, signed_headers

SECRET = "signing-secret"
TOKEN = "xoxb-test"
TZ = ZoneInfo("Europe/Berlin")


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


def command_body(user_id: str, response_url: str) -> str:
    return urlencode(
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


def signed_command(user_id: str, response_url: str, *, secret: str = SECRET) -> AsyncBoltRequest:
    body = command_body(user_id, response_url)
    timestamp = str(int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    headers: dict[str, str | Sequence[str]] = {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": timestamp,
        "x-slack-signature": signature,
    }
    return AsyncBoltRequest(body=body, headers=headers)


async def add_usage(
    sessions: async_sessionmaker[AsyncSession], user_id: str, credits: int, at: datetime | None = None
) -> None:
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
                created_at=at or datetime.now(UTC),
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


async def post_command(bot: Bot, user_id: str, response_url: str) -> int:
    """`/usage` as Slack sends it: a signed form POST to the bot's own events endpoint."""
    body = command_body(user_id, response_url)
    headers = signed_headers(body) | {"Content-Type": "application/x-www-form-urlencoded"}
    return (await bot.http.post("/slack/events", content=body, headers=headers)).status_code


def zone_whose_day_differs_from_utcs(now: datetime) -> ZoneInfo:
    # UTC+14 is a day ahead from 10:00 UTC on, UTC-11 a day behind until 11:00 UTC: one always is.
    zones = (ZoneInfo("Pacific/Kiritimati"), ZoneInfo("Pacific/Pago_Pago"))
    return next(zone for zone in zones if now.astimezone(zone).date() != now.date())


async def test_usage_counts_today_in_the_callers_own_time_zone(
    db_url: str,
    sessions: async_sessionmaker[AsyncSession],
    fakes: tuple[FakeSlackApi, FakeAimlApi],
    response_url: ResponseUrl,
) -> None:
    slack, aiml = fakes
    now = datetime.now(UTC)
    zone = zone_whose_day_differs_from_utcs(now)
    slack.users["UFAR"] = FakeUser(real_name="Far Away", tz=zone.key)

    def in_local_today(at: datetime) -> bool:
        return at.astimezone(zone).date() == now.astimezone(zone).date()

    # A call inside the caller's today but not UTC's, or the other way round.
    earlier = next(
        at
        for at in (now - timedelta(hours=h) for h in range(1, 24))
        if in_local_today(at) != (at.date() == now.date())
    )
    await add_usage(sessions, "UFAR", 1_000, at=now)
    await add_usage(sessions, "UFAR", 1_000, at=earlier)
    expected = 1 + in_local_today(earlier)

    async with running_bot(make_settings(db_url, slack, aiml, usage_digest_tz="UTC"), slack) as bot:
        assert await post_command(bot, "UFAR", response_url.url) == 200
        answer = await response_url.next_answer()

    today = field_texts(answer)[0]
    assert today.startswith(f"*Today*\n{expected} request{'s' if expected > 1 else ''}\n")
    assert f"Days are counted in {zone.key}." in str(answer["blocks"])
    assert [call.params["user"] for call in slack.calls_to("users.info")] == ["UFAR"]


async def test_usage_falls_back_to_the_digest_zone_when_the_profile_zone_is_unknown(
    db_url: str,
    sessions: async_sessionmaker[AsyncSession],
    fakes: tuple[FakeSlackApi, FakeAimlApi],
    response_url: ResponseUrl,
) -> None:
    slack, aiml = fakes
    slack.users["UODD"] = FakeUser(real_name="Odd Zone", tz="Mars/Olympus_Mons")
    await add_usage(sessions, "UODD", 1_000)

    async with running_bot(make_settings(db_url, slack, aiml, usage_digest_tz="Asia/Tokyo"), slack) as bot:
        assert await post_command(bot, "UODD", response_url.url) == 200
        answer = await response_url.next_answer()

    assert answer["response_type"] == "ephemeral"
    assert "Days are counted in Asia/Tokyo." in str(answer["blocks"])
