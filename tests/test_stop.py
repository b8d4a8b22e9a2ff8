"""Stopping an answer while it streams: the Stop button and the agent session's stop, end to end
through the bot's real endpoint, the fake Slack and AI/ML APIs, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.ports import ReplySummary
from bot.slack.edit_budget import EditBudget
from bot.slack.renderer import STOP_ACTION, SlackReply, stop_button
from bot.storage.models import Message, MessageStatus, Role, UsageRecord
from tests.fakes.aimlapi import FakeAimlApi, RecordedRequest, Reply
from tests.fakes.slack_api import FakeMessage, FakeSlackApi, FakeUser, reject
from tests.harness import (
    Bot,
    agent_session_stopped,
    eventually,
    make_settings,
    mention,
    message,
    running_bot,
)

ASKER, STRANGER, WORKSPACE_ADMIN, BOT_ADMIN = "U1", "U2", "U3", "U4"
QUESTION = "100.000001"
# Three pieces arrive ("one ", "two ", "thre"), then the model goes quiet with the request open.
STALLING = Reply(content="one two three four five six", chunk_size=4, stall_after=3)


@pytest.fixture
async def bot(db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi) -> AsyncIterator[Bot]:
    slack.users[ASKER] = FakeUser(real_name="Ada Lovelace", display_name="ada")
    slack.users[STRANGER] = FakeUser(real_name="Charles Babbage", display_name="charles")
    slack.users[WORKSPACE_ADMIN] = FakeUser(real_name="Grace Hopper", display_name="grace", is_admin=True)
    slack.users[BOT_ADMIN] = FakeUser(real_name="Alan Turing", display_name="alan")
    settings = make_settings(db_url, slack, aiml, admin_user_ids=BOT_ADMIN)
    async with running_bot(settings, slack, aiml) as running:
        yield running


def stop_buttons(msg: FakeMessage) -> list[dict[str, Any]]:
    return [
        element
        for block in msg.blocks or []
        if block.get("type") == "actions"
        for element in block.get("elements", [])
        if element.get("action_id") == STOP_ACTION
    ]


def press_stop(msg: FakeMessage, user: str, *, value: str | None = None) -> dict[str, Any]:
    """The `block_actions` payload Slack sends when `user` presses the Stop button on `msg`."""
    buttons = stop_buttons(msg)
    value = value if value is not None else buttons[0]["value"]
    return {
        "type": "block_actions",
        "team": {"id": "T1", "domain": "fake"},
        "user": {"id": user, "username": user.lower(), "team_id": "T1"},
        "api_app_id": "A1",
        "token": "legacy",
        "trigger_id": "1.2.3",
        "container": {
            "type": "message",
            "message_ts": msg.ts,
            "channel_id": msg.channel,
            "is_ephemeral": False,
            "thread_ts": msg.thread_ts,
        },
        "channel": {"id": msg.channel, "name": "general"},
        "message": msg.as_api(),
        "response_url": "http://127.0.0.1:9/unused",
        "actions": [
            {
                "type": "button",
                "action_id": STOP_ACTION,
                "block_id": STOP_ACTION,
                "value": value,
                "text": {"type": "plain_text", "text": "Stop"},
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }


async def streaming_reply(bot: Bot, text: str, thread: str = QUESTION, channel: str = "C1") -> FakeMessage:
    """The bot's reply in `thread` once it shows `text` (with its Stop button) while streaming."""

    def shown() -> bool:
        replies = bot.replies(channel, thread)
        return bool(replies) and replies[-1].markdown.startswith(text) and bool(stop_buttons(replies[-1]))

    await eventually(shown, timeout=5)
    return bot.replies(channel, thread)[-1]


async def closed_promptly(request: RecordedRequest, seconds: float = 1.0) -> bool:
    """The fake AI/ML API saw the bot close the streaming request within `seconds`."""
    try:
        await asyncio.wait_for(request.done.wait(), seconds)
    except TimeoutError:
        return False
    return request.client_disconnected


async def rows(db_url: str) -> tuple[list[UsageRecord], list[Message]]:
    from bot.storage.db import create_engine, session_factory

    engine = create_engine(db_url)
    try:
        sessions: async_sessionmaker[AsyncSession] = session_factory(engine)
        async with sessions() as session:
            usage = list((await session.scalars(select(UsageRecord).order_by(UsageRecord.id))).all())
            messages = list((await session.scalars(select(Message).order_by(Message.id))).all())
        return usage, messages
    finally:
        await engine.dispose()


async def test_the_asker_stops_an_answer_with_the_button_and_keeps_what_was_written(
    bot: Bot, slack: FakeSlackApi, aiml: FakeAimlApi, db_url: str
) -> None:
    aiml.enqueue(STALLING)
    await bot.send(mention("count to six", QUESTION, user=ASKER))
    shown = await streaming_reply(bot, "one two thre")

    started = time.monotonic()
    response = await bot.interact(press_stop(shown, ASKER))
    acked_in = time.monotonic() - started

    assert response.status_code == 200
    assert acked_in < 3.0
    assert await closed_promptly(aiml.chat_requests[-1])
    await bot.idle()
    [final] = bot.replies("C1", QUESTION)
    assert final.markdown == "one two thre"
    assert "Stopped by ada" in final.context
    assert "glm-5" in final.context  # the same final layout as a finished answer
    assert stop_buttons(final) == []
    assert slack.ephemerals == []
    [usage], messages = await rows(db_url)
    assert usage.status == "stopped"
    assert usage.tokens_estimated is True
    assert usage.completion_tokens is not None and usage.completion_tokens > 0
    assert usage.prompt_tokens is not None and usage.prompt_tokens > 0
    assert usage.credits_used is None  # unknown, never 0
    answer = [m for m in messages if m.role is Role.ASSISTANT]
    assert [(m.content, m.status) for m in answer] == [("one two thre", MessageStatus.COMPLETE)]


async def test_an_answer_that_continued_in_a_second_message_is_stopped_from_that_message(
    bot: Bot, aiml: FakeAimlApi
) -> None:
    paragraphs = [f"Paragraph {i}. " + "words " * 80 + "\n\n" for i in range(12)]  # ~6,000 characters
    aiml.enqueue(Reply(content=paragraphs, stall_after=len(paragraphs)))
    await bot.send(mention("write a lot", QUESTION, user=ASKER))
    await eventually(
        lambda: len(bot.replies("C1", QUESTION)) == 2 and bool(stop_buttons(bot.replies("C1", QUESTION)[1]))
    )
    second = bot.replies("C1", QUESTION)[1]

    await bot.interact(press_stop(second, ASKER))

    assert await closed_promptly(aiml.chat_requests[-1])
    await bot.idle()
    first, last = bot.replies("C1", QUESTION)
    assert bot.answer("C1", QUESTION) == "".join(paragraphs)
    assert "Stopped by ada" in last.context
    assert stop_buttons(first) == stop_buttons(last) == []


async def test_the_agent_sessions_stop_control_stops_the_answer_and_ends_processing(
    bot: Bot, slack: FakeSlackApi, aiml: FakeAimlApi, db_url: str
) -> None:
    aiml.enqueue(STALLING)
    await bot.send(message("count to six", QUESTION, channel="D1", channel_type="im", user=ASKER))
    shown = await streaming_reply(bot, "one two thre", channel="D1")

    response = await bot.send(agent_session_stopped("D1", QUESTION, user=ASKER))

    assert response.status_code == 200
    assert await closed_promptly(aiml.chat_requests[-1])
    await bot.idle()
    final = slack.message("D1", shown.ts)
    assert final.markdown == "one two thre"
    assert "Stopped by ada" in final.context
    assert stop_buttons(final) == []
    # The session was `processing` while the answer streamed, and is moved out of it after the stop.
    assert slack.session_statuses == [("D1", QUESTION, "processing"), ("D1", QUESTION, "active")]
    [usage], _ = await rows(db_url)
    assert (usage.status, usage.tokens_estimated) == ("stopped", True)


async def test_the_agent_sessions_stop_finds_the_answer_by_the_streams_slack_names(
    bot: Bot, slack: FakeSlackApi, aiml: FakeAimlApi
) -> None:
    aiml.enqueue(STALLING)
    await bot.send(message("count to six", QUESTION, channel="D1", channel_type="im", user=ASKER))
    shown = await streaming_reply(bot, "one two thre", channel="D1")

    # A thread_ts the bot does not know: only the message ts can find the answer.
    event = agent_session_stopped("D1", "1.000001", user=ASKER, streaming_message_ts=[shown.ts])
    await bot.send(event)

    assert await closed_promptly(aiml.chat_requests[-1])
    await bot.idle()
    assert "Stopped by ada" in slack.message("D1", shown.ts).context


async def test_a_stranger_cannot_stop_someone_elses_answer_and_is_told_who_can(
    bot: Bot, slack: FakeSlackApi, aiml: FakeAimlApi, db_url: str
) -> None:
    content = "a slow but complete answer, piece by piece"
    aiml.enqueue(Reply(content=content, chunk_size=4, chunk_interval=0.15))
    await bot.send(mention("explain slowly", QUESTION, user=ASKER))
    shown = await streaming_reply(bot, "a sl")

    response = await bot.interact(press_stop(shown, STRANGER))
    await bot.idle()

    assert response.status_code == 200
    [refusal] = slack.ephemerals
    assert (refusal.user, refusal.channel, refusal.thread_ts) == (STRANGER, "C1", QUESTION)
    assert refusal.text == "Only ada or an admin can stop this answer."
    [final] = bot.replies("C1", QUESTION)
    assert final.markdown == content
    assert "Stopped" not in final.context
    assert aiml.chat_requests[-1].client_disconnected is False
    [usage], _ = await rows(db_url)
    assert (usage.status, usage.tokens_estimated, usage.credits_used) == ("complete", False, 1234)


@pytest.mark.parametrize(("admin", "name"), [(WORKSPACE_ADMIN, "grace"), (BOT_ADMIN, "alan")])
async def test_an_admin_can_stop_anyones_answer(
    bot: Bot, slack: FakeSlackApi, aiml: FakeAimlApi, admin: str, name: str
) -> None:
    aiml.enqueue(STALLING)
    await bot.send(mention("count to six", QUESTION, user=ASKER))
    shown = await streaming_reply(bot, "one two thre")

    await bot.interact(press_stop(shown, admin))

    assert await closed_promptly(aiml.chat_requests[-1])
    await bot.idle()
    [final] = bot.replies("C1", QUESTION)
    assert final.markdown == "one two thre"
    assert f"Stopped by {name}" in final.context
    assert slack.ephemerals == []


async def test_stopping_an_answer_that_already_ended_changes_nothing(
    bot: Bot, slack: FakeSlackApi, aiml: FakeAimlApi, db_url: str
) -> None:
    aiml.enqueue(Reply(content="All done.", chunk_size=3, chunk_interval=0.1))
    await bot.send(mention("quick one", QUESTION, user=ASKER))
    streaming = await streaming_reply(bot, "All")
    press = press_stop(streaming, ASKER)  # from a Slack client that still shows the button
    await bot.idle()
    edits, calls = slack.message("C1", streaming.ts).edits, len(slack.calls)

    pressed = await bot.interact(press)
    session = await bot.send(agent_session_stopped("C1", QUESTION, user=ASKER))
    await bot.idle()

    assert (pressed.status_code, session.status_code) == (200, 200)
    after = slack.message("C1", streaming.ts)
    assert (after.markdown, after.edits) == ("All done.", edits)
    assert "Stopped" not in after.context
    assert slack.ephemerals == []
    # Only the session is moved out of `processing` (harmless when it is not).
    assert [c.method for c in slack.calls[calls:]] == ["agents.sessions.setStatus"]
    [usage], _ = await rows(db_url)
    assert usage.status == "complete"


async def test_the_next_question_after_a_stop_is_answered_with_the_stopped_answer_in_its_history(
    bot: Bot, aiml: FakeAimlApi
) -> None:
    aiml.enqueue(STALLING, Reply(content="Seven."))
    await bot.send(mention("count to six", QUESTION, user=ASKER))
    shown = await streaming_reply(bot, "one two thre")
    await bot.interact(press_stop(shown, ASKER))
    await bot.idle()

    await bot.send(message("and after six?", "100.000002", thread_ts=QUESTION, user=ASKER))
    await bot.idle()

    history = [(m["role"], m["content"]) for m in aiml.chat_requests[-1].json["messages"][1:]]
    assert history == [
        ("user", "count to six"),
        ("assistant", "one two thre"),
        ("user", "and after six?"),
    ]
    stopped, answered = bot.replies("C1", QUESTION)
    assert "Stopped by ada" in stopped.context
    assert answered.markdown == "Seven."
    assert "Stopped" not in answered.context
    assert stop_buttons(answered) == []


async def test_an_answer_stopped_while_the_model_only_thinks_ends_with_the_note_alone(
    bot: Bot, aiml: FakeAimlApi, db_url: str
) -> None:
    aiml.enqueue(Reply(reasoning="Let me think about it.", content="Six.", chunk_size=4, stall_after=3))
    await bot.send(mention("count to six", QUESTION, user=ASKER))
    shown = await streaming_reply(bot, "")  # the placeholder, thinking, with its Stop button
    await eventually(lambda: len(aiml.chat_requests) == 1)
    await asyncio.sleep(0.3)  # the three reasoning pieces are sent at once; let them arrive

    await bot.interact(press_stop(shown, ASKER))

    assert await closed_promptly(aiml.chat_requests[-1])
    await bot.idle()
    [final] = bot.replies("C1", QUESTION)
    assert final.markdown == ""
    assert "Stopped by ada" in final.context
    assert stop_buttons(final) == []
    [usage], _ = await rows(db_url)
    assert (usage.status, usage.tokens_estimated, usage.credits_used) == ("stopped", True, None)
    assert usage.reasoning_tokens is not None and usage.reasoning_tokens > 0


async def test_a_workspace_that_refuses_agent_sessions_is_not_asked_again_for_every_answer(
    bot: Bot, slack: FakeSlackApi, aiml: FakeAimlApi
) -> None:
    async def not_an_agent(_params: dict[str, Any], _team: str) -> dict[str, Any]:
        raise reject("not_allowed")  # e.g. the app is not declared an agent

    slack.route("agents.sessions.setStatus", not_an_agent)
    aiml.enqueue(Reply(content="First."), Reply(content="Second."))
    await bot.send(mention("one", QUESTION, user=ASKER))
    await bot.idle()
    await bot.send(mention("two", "200.000001", user=ASKER))
    await bot.idle()

    assert bot.answer("C1", QUESTION) == "First."
    assert bot.answer("C1", "200.000001") == "Second."
    assert len(slack.calls_to("agents.sessions.setStatus")) == 1


# ---- the renderer: the button rides along with the text, never alone ----------------------------


async def test_the_stop_button_shows_while_streaming_and_costs_no_edit_of_its_own() -> None:
    async with FakeSlackApi() as fake:
        client = AsyncWebClient(base_url=fake.api_url, token="xoxb-test")
        root = fake.add_message("C1", "<@UBOT> a question")
        reply = SlackReply(client, EditBudget(), "C1", root, interval=0.05, max_chars=600, stop_value=root)
        await reply.start()
        for i in range(200):  # long enough to continue in a second and third message
            await reply.append(f"word {i} ")
            await asyncio.sleep(0.005)
        await reply.finish(ReplySummary("glm-5", 1, 2, 3, "stop"))

        posts = fake.calls_to("chat.postMessage")
        updates = [c for c in fake.calls_to("chat.update") if c.ok]
        messages = [fake.message("C1", ts) for ts in reply.refs]

    assert len(messages) >= 3
    assert all(stop_buttons(m) == [] for m in messages)
    assert _has_stop(posts[0].params["blocks"])  # the placeholder can be stopped already
    by_message: dict[str, list[dict[str, Any]]] = {}
    for call in updates:
        by_message.setdefault(call.params["ts"], []).append(call.params)
    for edits in by_message.values():
        *interim, last = edits
        assert all(_has_stop(e["blocks"]) for e in interim)
        assert not _has_stop(last["blocks"])  # sealed or final: the button is gone
        texts = [e["text"] for e in edits]
        assert len(set(texts)) == len(texts), "an edit that changed only the button"


def _has_stop(blocks: Any) -> bool:
    return any(b.get("type") == "actions" and b.get("block_id") == STOP_ACTION for b in blocks or [])


async def test_the_stop_button_is_one_slack_accepts_and_the_fake_refuses_one_slack_would_not() -> None:
    async with FakeSlackApi() as fake:
        client = AsyncWebClient(base_url=fake.api_url, token="xoxb-test")
        ok = await client.chat_postMessage(channel="C1", text="streaming", blocks=[stop_button("1.000001")])
        too_long = stop_button("1.000001")
        too_long["elements"][0]["value"] = "x" * 2001  # slack_sdk's models would refuse to build it
        with pytest.raises(SlackApiError) as refused:
            await client.chat_postMessage(channel="C1", text="streaming", blocks=[too_long])
    assert ok["ok"]
    assert refused.value.response["error"] == "invalid_blocks"
