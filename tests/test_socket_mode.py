"""Socket Mode end to end: the real bot (SLACK_APP_TOKEN set) connects to the fake Socket Mode gateway
through `apps.connections.open` on the fake Web API, receives events over the websocket and acks them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.app import BotRuntime
from bot.settings import Settings, SettingsError
from tests.fakes.aimlapi import FakeAimlApi, Reply
from tests.fakes.slack_api import FakeSlackApi, FakeUser
from tests.fakes.socket_mode import FakeSocketMode, event_callback
from tests.harness import Bot, eventually, make_settings, mention, running_bot

APP_TOKEN = "xapp-test"
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
async def socket(slack: FakeSlackApi) -> AsyncIterator[FakeSocketMode]:
    slack.users.setdefault("U1", FakeUser(real_name="U1"))  # whoever writes over the socket is a member
    async with FakeSocketMode(slack, app_token=APP_TOKEN) as fake:
        yield fake


def socket_settings(db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi, app_token: str) -> Settings:
    return make_settings(db_url, slack, aiml, slack_app_token=app_token, slack_signing_secret=None)


@pytest.fixture
async def bot(
    db_url: str, slack: FakeSlackApi, socket: FakeSocketMode, aiml: FakeAimlApi
) -> AsyncIterator[Bot]:
    async with running_bot(socket_settings(db_url, slack, aiml, APP_TOKEN), slack, aiml) as running:
        await socket.wait_connected()
        yield running


async def test_a_mention_over_the_socket_is_acked_and_answered_in_its_thread(bot, socket, slack, aiml):
    aiml.enqueue(Reply(content="Four, over the socket."))
    envelope_id = await socket.send_event(event_callback(mention("What is 2+2?", "100.000001")))

    ack = await socket.wait_ack(envelope_id, timeout=3)
    await bot.idle()

    assert ack.latency is not None and ack.latency < 3  # Slack redelivers unacked envelopes after 3 s
    assert ack.payload is None  # events_api envelopes are acked with the envelope id only
    assert bot.answer("C1", "100.000001") == "Four, over the socket."
    assert [r.thread_ts for r in bot.replies("C1", "100.000001")] == ["100.000001"]
    assert [m["content"] for m in aiml.requests[-1].json["messages"][1:]] == ["What is 2+2?"]
    [opened] = slack.calls_to("apps.connections.open")
    assert opened.ok  # authenticated with the app-level token, not the bot token
    assert socket.unexpected == []


async def test_healthz_checks_the_database_in_socket_mode(bot):
    response = await bot.http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}
    assert (await bot.http.get("/metrics")).status_code == 200


@sqlite_only
async def test_there_is_no_events_endpoint_in_socket_mode(bot, aiml):
    response = await bot.http.post("/slack/events", json=event_callback(mention("hi", "100.000001")))
    assert response.status_code == 404
    await bot.idle()
    assert aiml.requests == []


@sqlite_only
async def test_a_disconnect_request_is_followed_by_a_new_connection_that_gets_events(
    bot, socket, slack, aiml
):
    await socket.disconnect("refresh_requested")
    await eventually(lambda: socket.opened == 2 and socket.connections == 1, timeout=5)
    assert len(slack.calls_to("apps.connections.open")) == 2

    aiml.enqueue(Reply(content="Still here."))
    envelope_id = await socket.send_event(event_callback(mention("Are you there?", "100.000001")))
    await socket.wait_ack(envelope_id, timeout=3)
    await bot.idle()
    assert bot.answer("C1", "100.000001") == "Still here."


@sqlite_only
async def test_a_wrong_app_token_fails_start_up_with_one_clear_line(db_url, slack, socket, aiml):
    runtime = BotRuntime(socket_settings(db_url, slack, aiml, "xapp-wrong"))
    try:
        with pytest.raises(SettingsError, match=r"SLACK_APP_TOKEN.*invalid_auth"):
            await asyncio.wait_for(runtime.start(), timeout=2)
    finally:
        await runtime.stop()
    [opened] = slack.calls_to("apps.connections.open")
    assert opened.error == "invalid_auth"
    assert socket.opened == 0
