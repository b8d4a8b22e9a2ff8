"""Feedback buttons under every final answer, and a press through the bot's real endpoint: stored (one
vote per person per answer, changeable), counted in /metrics and shown in the daily digest."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select

from bot.jobs.digest import DigestStatus, run_digest
from bot.slack.feedback import ACTION_ID
from bot.slack.text import MAX_MESSAGE_CHARS
from bot.storage.db import create_engine, session_factory
from bot.storage.models import FeedbackVote
from tests.fakes.aimlapi import ErrorReply, Reply
from tests.fakes.slack_api import FakeMessage
from tests.harness import Bot, make_settings, mention, running_bot, signed_headers
from tests.test_metrics import scrape


def press(message_ts: str, value: str, *, user: str = "U1", channel: str = "C1") -> dict[str, Any]:
    """A `block_actions` payload as Slack sends it when someone presses a feedback button."""
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T1"},
        "api_app_id": "A1",
        "token": "legacy",
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
        },
        "trigger_id": "1.2.3",
        "team": {"id": "T1", "domain": "fake"},
        "channel": {"id": channel, "name": "general"},
        "message": {"type": "message", "ts": message_ts, "text": "the answer"},
        "response_url": "http://127.0.0.1:9/unused",
        "actions": [
            {
                "type": "feedback_buttons",
                "action_id": ACTION_ID,
                "block_id": "fb",
                "value": value,
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }


def feedback_elements(message: FakeMessage) -> list[dict[str, Any]]:
    return [
        element
        for block in message.blocks or []
        if block["type"] == "context_actions"
        for element in block["elements"]
        if element["type"] == "feedback_buttons"
    ]


async def votes(db_url: str) -> list[tuple[str, str, str]]:
    engine = create_engine(db_url)
    try:
        async with session_factory(engine)() as session:
            rows = await session.execute(
                select(FeedbackVote.message_ts, FeedbackVote.user_id, FeedbackVote.value).order_by(
                    FeedbackVote.user_id
                )
            )
            return [tuple(row) for row in rows]  # type: ignore[misc]
    finally:
        await engine.dispose()


FEEDBACK = "slackbot_feedback_total"


async def answered(bot: Bot, aiml: Any, ts: str, content: str = "Forty-two.") -> FakeMessage:
    aiml.enqueue(Reply(content=content))
    await bot.send(mention("a question", ts))
    await bot.idle()
    return bot.replies("C1", ts)[-1]


@pytest.fixture
async def bot(db_url, slack, aiml):
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as running:
        yield running


async def test_a_final_answer_ends_with_feedback_buttons_after_its_metadata(bot, aiml):
    reply = await answered(bot, aiml, "100.000001")

    assert [b["type"] for b in reply.blocks or []] == ["markdown", "context", "context_actions"]
    [buttons] = feedback_elements(reply)
    assert buttons["action_id"] == ACTION_ID
    assert {buttons["positive_button"]["value"], buttons["negative_button"]["value"]} == {"up", "down"}


async def test_a_long_answer_carries_the_buttons_only_on_its_last_message(bot, aiml):
    long = ("A paragraph of the answer. " * 40 + "\n\n") * (2 * MAX_MESSAGE_CHARS // 1000)
    aiml.enqueue(Reply(content=long))
    await bot.send(mention("a long one", "110.000001"))
    await bot.idle()

    messages = bot.replies("C1", "110.000001")
    assert len(messages) >= 2
    assert [len(feedback_elements(m)) for m in messages] == [0] * (len(messages) - 1) + [1]


async def test_a_failed_answer_has_no_feedback_buttons(bot, aiml):
    aiml.enqueue(*[ErrorReply(status=503)] * 4)  # the first try and LLM_MAX_RETRIES=3
    await bot.send(mention("a question", "120.000001"))
    await bot.idle()

    [reply] = bot.replies("C1", "120.000001")
    assert feedback_elements(reply) == []


async def test_a_vote_is_stored_changed_and_counted_in_metrics(bot, aiml, db_url):
    reply = await answered(bot, aiml, "200.000001")

    first = await bot.interact(press(reply.ts, "up"))
    await bot.idle()
    assert first.status_code == 200
    assert await votes(db_url) == [(reply.ts, "U1", "up")]

    second = await bot.interact(press(reply.ts, "down"))
    await bot.idle()
    assert second.status_code == 200
    assert await votes(db_url) == [(reply.ts, "U1", "down")]  # changed, not added

    metrics = await scrape(bot.http)
    assert metrics[(FEEDBACK, (("value", "up"),))] == 1
    assert metrics[(FEEDBACK, (("value", "down"),))] == 1


async def test_a_second_persons_vote_counts_separately(bot, aiml, db_url):
    reply = await answered(bot, aiml, "300.000001")

    await bot.interact(press(reply.ts, "up", user="U1"))
    await bot.interact(press(reply.ts, "down", user="U2"))
    await bot.idle()

    assert await votes(db_url) == [(reply.ts, "U1", "up"), (reply.ts, "U2", "down")]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # a server that can go away
async def test_a_press_is_acknowledged_at_once_even_while_the_database_is_away(db_url, proxy, slack, aiml):
    async with running_bot(make_settings(proxy.url_for(db_url), slack, aiml), slack, aiml) as bot:
        reply = await answered(bot, aiml, "400.000001")
        proxy.cut()
        started = time.monotonic()
        response = await bot.interact(press(reply.ts, "up"))
        acked_after = time.monotonic() - started
        await bot.idle()
        proxy.restore()
        metrics = await scrape(bot.http)

    assert response.status_code == 200
    assert acked_after < 3.0
    assert (FEEDBACK, (("value", "up"),)) not in metrics or metrics[(FEEDBACK, (("value", "up"),))] == 0
    assert await votes(db_url) == []


async def test_the_digest_shows_the_days_votes_and_the_share_of_answers_rated(bot, slack, aiml, db_url):
    slack.set_clock(time.time())  # votes count on the day their answer was posted (its ts)
    rated = await answered(bot, aiml, "500.000001")
    await answered(bot, aiml, "500.000002")
    await bot.interact(press(rated.ts, "up", user="U1"))
    await bot.interact(press(rated.ts, "down", user="U2"))
    await bot.idle()

    engine = create_engine(db_url)
    try:
        outcome = await run_digest(
            day=datetime.fromtimestamp(float(rated.ts), UTC).date(),
            channel="CDIGEST",
            sessions=session_factory(engine),
            client=AsyncWebClient(token="xoxb-test", base_url=slack.api_url),
            tz=ZoneInfo("UTC"),
            balance=None,
        )
    finally:
        await engine.dispose()

    assert outcome.status is DigestStatus.POSTED
    assert outcome.report is not None and outcome.report.feedback.up == 1
    [digest] = slack.messages("CDIGEST")
    fields = [f["text"] for b in digest.blocks or [] if b["type"] == "section" for f in b.get("fields", [])]
    assert "*Feedback*\n👍 1 · 👎 1 · 50% of answers rated" in fields


# ---- hostile and malformed presses ----------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p["actions"][0].update(value="sideways"),
        lambda p: p["actions"][0].pop("value"),
        lambda p: (p.pop("container"), p.pop("message")),
        lambda p: p["container"].update(message_ts="not-a-ts", channel_id="x" * 500),
        lambda p: p["container"].update(message_ts="999999999999.000001"),  # no date holds it
        lambda p: p.update(user="U1"),
    ],
)
async def test_a_malformed_press_of_our_buttons_is_acknowledged_and_stores_nothing(bot, aiml, db_url, change):
    reply = await answered(bot, aiml, "600.000001")
    payload = press(reply.ts, "up")
    change(payload)

    response = await bot.interact(payload)
    await bot.idle()

    assert response.status_code == 200
    assert await votes(db_url) == []
    metrics = await scrape(bot.http)
    assert metrics[("slackbot_events_ignored_total", (("reason", "malformed"),))] == 1


@pytest.mark.parametrize(
    "form",
    [
        {"payload": "{not json"},
        {"payload": json.dumps({"type": "block_actions", "actions": "none"})},
        {"payload": json.dumps({"type": "block_actions", "actions": [{"action_id": "someone_elses"}]})},
        {"nothing": "here"},
    ],
)
async def test_a_payload_that_is_not_a_press_of_our_buttons_gets_a_4xx_without_a_crash(
    bot, aiml, db_url, form
):
    response = await bot.post_form(form)
    await bot.idle()
    reply = await answered(bot, aiml, "700.000001")  # the bot still answers

    assert 400 <= response.status_code < 500
    assert await votes(db_url) == []
    assert reply.markdown == "Forty-two."


async def test_an_unsigned_press_is_refused(bot, aiml, db_url):
    reply = await answered(bot, aiml, "800.000001")
    body = "payload=" + json.dumps(press(reply.ts, "up"))
    headers = signed_headers(body, secret="wrong") | {"Content-Type": "application/x-www-form-urlencoded"}

    response = await bot.http.post("/slack/events", content=body, headers=headers)

    assert response.status_code == 401
    assert await votes(db_url) == []
