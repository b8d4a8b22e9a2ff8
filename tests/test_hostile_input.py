"""Hostile and broken requests through the real endpoint: each gets a 4xx or a quiet 200, nothing
reaches the model or Slack, and the next normal mention is still answered."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.slack.people import LOOKUPS_PER_MESSAGE
from tests.fakes.aimlapi import Reply
from tests.fakes.slack_api import FakeUser
from tests.harness import Bot, make_settings, mention, running_bot, signed_headers


@pytest.fixture
async def bot(db_url, slack, aiml) -> AsyncIterator[Bot]:
    slack.users["U1"] = FakeUser(real_name="U1")  # the asker of the raw bodies below is a member
    async with running_bot(make_settings(db_url, slack, aiml), slack) as running:
        yield running


def envelope(event: Any, **fields: Any) -> dict[str, Any]:
    return {
        "type": "event_callback",
        "team_id": "T1",
        "api_app_id": "A1",
        "event_id": f"Ev{time.monotonic_ns()}",
        "event_time": int(time.time()),
        "event": event,
        **fields,
    }


def nested_blocks_json(depth: int) -> str:
    """`blocks` nested `depth` objects deep (json.dumps itself refuses to go that deep)."""
    return '[{"type": "rich_text", "elements": ' * depth + "[]" + "}]" * depth


async def post(bot: Bot, body: str | bytes, content_type: str | None = "application/json") -> int:
    """Sign and post `body`; a 400 must also tell Slack not to retry (the same body fails again)."""
    text = body if isinstance(body, str) else body.decode("latin-1")
    headers = signed_headers(text)
    if content_type is None:
        del headers["Content-Type"]
    else:
        headers["Content-Type"] = content_type
    raw = body.encode() if isinstance(body, str) else body
    response = await bot.http.post("/slack/events", content=raw, headers=headers)
    assert "Traceback" not in response.text
    if response.status_code == 400:
        assert response.headers.get("X-Slack-No-Retry") == "1"
    return response.status_code


MENTION = mention("hello", "1700000100.000001")

BROKEN_BODIES: dict[str, str | bytes] = {
    "malformed JSON": '{"type": "event_callback", "event": {',
    "a JSON array": "[1, 2, 3]",
    "a JSON string": '"event_callback"',
    "a JSON number": "42",
    "JSON null": "null",
    "an event that is a list": json.dumps(envelope([MENTION])),
    "an event that is a string": json.dumps(envelope("app_mention")),
    "an event that is null": json.dumps(envelope(None)),
    "an event without a type": json.dumps(envelope({"user": "U1", "channel": "C1"})),
    "a user that is a number": json.dumps(envelope(MENTION, user=5)),
    "authorizations that are not a list": json.dumps(envelope(MENTION, authorizations=7)),
    "a nested message that is a list": json.dumps(envelope({**MENTION, "message": [1]})),
    "JSON nested 100,000 deep": '{"event": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "invalid UTF-8": b'{"type": "event_callback", "event": {"type": "app_mention", "text": "\xff\xfe"}}',
    "a body over 1 MiB": json.dumps(envelope({**MENTION, "text": "x" * (1024**2 + 10)})),
}

QUIETLY_IGNORED_EVENTS: dict[str, dict[str, Any]] = {
    "an unknown event type": {"type": "galaxy_collapsed", "user": "U1"},
    "a mention without a user": {k: v for k, v in MENTION.items() if k != "user"},
    "a mention without a channel": {k: v for k, v in MENTION.items() if k != "channel"},
    "a mention without a ts": {k: v for k, v in MENTION.items() if k != "ts"},
    "a ts that is not a ts": {**MENTION, "ts": "yesterday"},
    "a thread_ts that is not a ts": {**MENTION, "thread_ts": "x" * 5000},
    "a channel id longer than any column": {**MENTION, "channel": "C" * 5000},
    "a user that is an object": {**MENTION, "user": {"id": "U1"}},
    "text that is a list": {**MENTION, "text": ["<@UBOT>", "hi"]},
    "an event type that is a huge string": {**MENTION, "type": "t" * 100_000},
}


@pytest.mark.parametrize("name", list(BROKEN_BODIES))
async def test_a_broken_body_gets_a_4xx_and_the_bot_keeps_serving(bot, slack, aiml, name):
    status = await post(bot, BROKEN_BODIES[name])
    assert 400 <= status < 500, f"{name}: HTTP {status}"
    await bot.idle()
    assert aiml.requests == [] and slack.calls_to("chat.postMessage") == []
    await still_answers(bot, aiml)


@pytest.mark.parametrize("name", list(QUIETLY_IGNORED_EVENTS))
async def test_an_event_with_missing_or_odd_fields_gets_a_quiet_200(bot, slack, aiml, name):
    event = QUIETLY_IGNORED_EVENTS[name]
    event_type = event.get("type")
    status = await post(bot, json.dumps(envelope(event)))
    # Bolt answers 404 to a request whose event type no listener matches by name.
    assert status == 200 or (status == 404 and not isinstance(event_type, str)), f"{name}: {status}"
    await bot.idle()
    assert aiml.requests == [] and slack.calls_to("chat.postMessage") == []
    await still_answers(bot, aiml)


async def test_a_mention_of_almost_1_mib_gets_a_too_long_note_without_a_model_call(bot, aiml):
    ts = "1700000400.000001"
    body = json.dumps(envelope(mention("x" * 1_000_000, ts)))
    assert len(body) < 1024**2
    assert await post(bot, body) == 200
    await bot.idle(timeout=30)
    assert aiml.requests == []
    assert "too long" in bot.replies("C1", ts)[-1].context
    await still_answers(bot, aiml)


async def test_a_mention_with_deeply_nested_blocks_is_answered_from_its_text(bot, aiml):
    aiml.enqueue(Reply(content="Blocks are not read."))
    event = json.dumps(envelope({**MENTION, "ts": "1700000300.000001"}))
    body = event[:-2] + ', "blocks": ' + nested_blocks_json(400) + "}}"
    assert json.loads(body)["event"]["ts"] == "1700000300.000001"
    assert await post(bot, body) == 200
    await bot.idle()
    assert bot.answer("C1", "1700000300.000001") == "Blocks are not read."
    await still_answers(bot, aiml)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
async def test_a_wrong_content_type_does_not_crash_the_bot(bot, aiml, content_type):
    # Signed bodies are read by their shape, whatever the header says: a quiet 200 for each.
    status = await post(bot, json.dumps(envelope({"type": "reaction_added", "user": "U1"})), content_type)
    assert status == 200
    form = "command=%2Fusage&text=" + "%FF" * 10
    assert await post(bot, form, content_type) == 200
    await still_answers(bot, aiml)


async def test_a_message_mentioning_10000_people_looks_up_a_bounded_number_of_names(bot, slack, aiml):
    people = [f"U{i:06d}" for i in range(10_000)]
    for user in people[:20]:
        slack.users[user] = FakeUser(real_name=f"Person {user}")
    text = "ping " + " ".join(f"<@{user}>" for user in people)
    aiml.enqueue(Reply(content="That is a lot of people."))
    response = await bot.send(mention(text, "1700000200.000001"))
    assert response.status_code == 200
    await bot.idle(timeout=30)
    # The asker's own account is looked up once besides (guests and other organisations are refused).
    named = [call for call in slack.calls_to("users.info") if call.params["user"] != "U1"]
    assert len({call.params["user"] for call in named}) == LOOKUPS_PER_MESSAGE
    # Tier 4's burst runs out within the message: a look-up refused with a short 429 is asked once more.
    assert len(named) <= LOOKUPS_PER_MESSAGE + slack.count_429s
    sent = aiml.requests[0].json["messages"][-1]["content"]
    assert sent.startswith("ping @Person U000000 ") and sent.endswith(" @U009999")
    assert bot.answer("C1", "1700000200.000001") == "That is a lot of people."
    await still_answers(bot, aiml)


async def still_answers(bot: Bot, aiml) -> None:
    aiml.enqueue(Reply(content="Still here."))
    ts = f"1700009999.{time.monotonic_ns() % 1_000_000:06d}"
    assert (await bot.send(mention("are you alive?", ts))).status_code == 200
    await bot.idle()
    assert bot.answer("C1", ts) == "Still here."
