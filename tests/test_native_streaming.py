"""Native streaming, the thinking status and the per-reply choice of `SLACK_STREAMING`, end to end:
signed events through the bot's real endpoint, the fake Slack (streams, limits, expiry) and the fake
AI/ML API, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import select

from bot.slack.recovery import last_message
from bot.storage.models import Message, Role
from tests.fakes.aimlapi import ErrorReply, Reply
from tests.fakes.slack_api import FakeMessage, FakeSlackApi, Handler, reject
from tests.fakes.slack_rules import SLACK_LIMITS
from tests.harness import Bot, eventually, make_settings, mention, message, running_bot

ANSWER = (
    "Here is a plan.\n\n"
    "1. Read the error.\n2. Find the line.\n\n"
    "```python\nprint('hi <!channel>')\n```\n\n"
    "Ping <!here> and @channel if it breaks. That's all."
)


def paragraphs(count: int, size: int = 300) -> str:
    return "\n\n".join(f"Paragraph {i}. " + "word " * ((size - 14) // 5) for i in range(count))


def final_state(bot: Bot, channel: str, thread: str) -> tuple[str, str]:
    """What a person sees once the answer is done: its text, and the last message's metadata."""
    replies = bot.replies(channel, thread)
    return "".join(m.markdown for m in replies), replies[-1].context


def streaming(messages: list[FakeMessage]) -> list[str]:
    return [m.ts for m in messages if m.streaming]


def settings(db_url: str, slack: FakeSlackApi, aiml: Any, mode: str, **more: Any) -> Any:
    return make_settings(db_url, slack, aiml, slack_streaming=mode, **more)


async def test_a_native_reply_ends_exactly_as_an_edited_reply_does(db_url, slack, aiml):
    for mode, thread in (("edits", "100.000001"), ("native", "200.000001")):
        async with running_bot(settings(db_url, slack, aiml, mode), slack, aiml) as bot:
            aiml.enqueue(Reply(content=ANSWER, chunk_size=7))
            await bot.send(mention("Plan?", thread))
            await bot.idle()
    edited, native = final_state(bot, "C1", "100.000001"), final_state(bot, "C1", "200.000001")

    assert native == edited
    assert "glm-5" in native[1] and "1,234 credits" in native[1]
    assert "<!channel>" not in native[0] and "<!here>" not in native[0]  # defused, as edits are
    assert [c.method for c in slack.calls_to("chat.startStream")] == ["chat.startStream"]
    assert not streaming(bot.replies("C1", "200.000001"))
    start = slack.calls_to("chat.startStream")[0].params
    assert (start["thread_ts"], start["recipient_user_id"], start["recipient_team_id"]) == (
        "200.000001",
        "U1",
        "T1",
    )


async def test_the_thinking_status_shows_at_once_and_no_placeholder_is_posted(db_url, slack, aiml):
    aiml.enqueue(Reply(content="Four.", ttft=1.5))
    async with running_bot(settings(db_url, slack, aiml, "native"), slack, aiml) as bot:
        sent = time.monotonic()
        await bot.send(mention("2+2?", "100.000001"))
        await eventually(lambda: slack.status("C1", "100.000001") != "", timeout=1.0)
        shown_after = time.monotonic() - sent
        assert bot.replies("C1", "100.000001") == []  # the status, not a placeholder message
        await bot.idle()

    assert shown_after < 1.0
    [status] = slack.calls_to("assistant.threads.setStatus")
    assert status.params["loading_messages"]
    assert slack.status("C1", "100.000001") == ""  # the answer's start cleared it
    assert bot.answer("C1", "100.000001") == "Four."


async def test_a_dm_streams_natively_without_recipients(db_url, slack, aiml):
    aiml.enqueue(Reply(content="Hello there."))
    async with running_bot(settings(db_url, slack, aiml, "auto"), slack, aiml) as bot:
        await bot.send(message("hi", "100.000001", channel="D1", channel_type="im"))
        await bot.idle()
    [start] = slack.calls_to("chat.startStream")
    assert "recipient_user_id" not in start.params
    assert bot.answer("D1", "100.000001") == "Hello there."


async def test_a_failed_reply_takes_the_status_down(db_url, slack, aiml):
    aiml.enqueue(ErrorReply(status=401, message="bad key", delay=0.3))
    async with running_bot(settings(db_url, slack, aiml, "native"), slack, aiml) as bot:
        await bot.send(mention("2+2?", "100.000001"))
        await bot.idle()
    assert [s[2] for s in slack.statuses] == ["is thinking…", ""]
    [reply] = bot.replies("C1", "100.000001")
    assert ":warning:" in reply.context
    assert slack.calls_to("chat.startStream") == []


async def test_without_the_status_a_placeholder_still_shows_activity(db_url, slack, aiml):
    slack.fail_next("assistant.threads.setStatus", error="missing_scope")
    aiml.enqueue(Reply(content="Four.", ttft=1.0))
    async with running_bot(settings(db_url, slack, aiml, "auto"), slack, aiml) as bot:
        await bot.send(mention("2+2?", "100.000001"))
        await eventually(lambda: len(bot.replies("C1", "100.000001")) == 1, timeout=1.5)
        assert "Thinking" in bot.replies("C1", "100.000001")[0].markdown
        await bot.idle()
    assert bot.answer("C1", "100.000001") == "Four."


async def test_without_the_status_text_that_comes_at_once_is_the_first_message_not_a_placeholder(
    db_url, slack, aiml
):
    # A placeholder would spend a scarce chat.update on showing the first text.
    slack.fail_next("assistant.threads.setStatus", error="missing_scope")
    aiml.enqueue(Reply(content="Four.", ttft=0.1))
    async with running_bot(settings(db_url, slack, aiml, "auto"), slack, aiml) as bot:
        await bot.send(mention("2+2?", "100.000001"))
        await bot.idle()
    posted = [c.params.get("text") or "" for c in slack.calls_to("chat.postMessage")]
    assert not any("Thinking" in text for text in posted)
    assert bot.answer("C1", "100.000001") == "Four."


async def test_a_refused_stream_falls_back_to_edits_with_no_text_lost_or_repeated(db_url, slack, aiml):
    slack.refuse_streams_in_channels = True
    content = paragraphs(20)  # about 6,000 characters: two edited messages
    aiml.enqueue(Reply(content=content, chunk_size=50, chunk_interval=0.005))
    async with running_bot(settings(db_url, slack, aiml, "auto"), slack, aiml) as bot:
        await bot.send(mention("Long please", "100.000001"))
        await bot.idle()
    assert [c.error for c in slack.calls_to("chat.startStream")] == ["channel_type_not_supported"]
    assert bot.answer("C1", "100.000001") == content
    replies = bot.replies("C1", "100.000001")
    assert len(replies) == 2
    # the first message began with the first text, never with a placeholder
    assert not any("Thinking" in shown for shown in replies[0].history)


async def test_an_expired_stream_is_finished_by_an_update_and_the_answer_continues(db_url, slack, aiml):
    slack.stream_expiry = 0.6
    content = paragraphs(8, 200)
    aiml.enqueue(Reply(content=content, chunk_size=40, chunk_interval=0.05))  # about 2 s of text
    async with running_bot(settings(db_url, slack, aiml, "native"), slack, aiml) as bot:
        await bot.send(mention("Slowly", "100.000001"))
        await bot.idle()
    replies = bot.replies("C1", "100.000001")
    assert len(replies) >= 2
    assert not streaming(replies)
    assert bot.answer("C1", "100.000001") == content
    assert "message_not_in_streaming_state" in {c.error for c in slack.calls}
    assert any(c.ok for c in slack.calls_to("chat.update"))
    assert "glm-5" in replies[-1].context


async def test_a_long_native_answer_continues_in_a_new_stream_at_a_paragraph_break(db_url, slack, aiml):
    content = paragraphs(20)  # about 6,000 characters
    aiml.enqueue(Reply(content=content, chunk_size=60))
    settings_ = settings(db_url, slack, aiml, "native", slack_stream_message_chars=2_000)
    async with running_bot(settings_, slack, aiml) as bot:
        await bot.send(mention("Long please", "100.000001"))
        await bot.idle()
    replies = bot.replies("C1", "100.000001")
    assert len(replies) >= 3
    assert all(len(m.markdown) <= 2_000 for m in replies)
    assert all(m.markdown.endswith("\n\n") for m in replies[:-1])
    assert bot.answer("C1", "100.000001") == content
    assert not streaming(replies)
    assert len(slack.calls_to("chat.stopStream")) == len(replies)


async def test_mixed_native_and_edited_streams_stay_within_every_budget(db_url, slack, aiml):
    replies = 14
    for _ in range(replies):
        aiml.enqueue(Reply(content=paragraphs(6, 150), chunk_size=20, chunk_interval=0.02))
    async with running_bot(
        settings(db_url, slack, aiml, "auto", stream_update_interval=0.3), slack, aiml
    ) as bot:
        await asyncio.gather(
            *(bot.send(mention("go", f"{100 + i}.000001", channel=f"C{i}")) for i in range(replies))
        )
        await bot.idle(timeout=90)
        metrics = (await bot.http.get("/metrics")).text

    answers = [bot.answer(f"C{i}", f"{100 + i}.000001") for i in range(replies)]
    assert answers == [paragraphs(6, 150)] * replies
    natives = len(slack.calls_to("chat.startStream"))
    assert 0 < natives < replies  # both ways were used
    assert slack.count_429s == 0
    for method in ("chat.startStream", "chat.stopStream", "chat.appendStream", "chat.update"):
        assert slack.most_in_a_minute(method) <= SLACK_LIMITS[method].per_minute + SLACK_LIMITS[method].burst
    assert 'slackbot_slack_budget_tokens{method="chat.startStream",team="T1"}' in metrics
    assert not any(m.streaming for i in range(replies) for m in bot.replies(f"C{i}", f"{100 + i}.000001"))


async def test_a_native_reply_records_where_each_message_begins_for_recovery(db_url, sessions, slack, aiml):
    content = paragraphs(14)
    aiml.enqueue(Reply(content=content, chunk_size=60))
    settings_ = settings(db_url, slack, aiml, "native", slack_stream_message_chars=2_000)
    async with running_bot(settings_, slack, aiml) as bot:
        await bot.send(mention("Long please", "100.000001"))
        await bot.idle()
    async with sessions() as session:
        query = select(Message).where(Message.role == Role.ASSISTANT)
        stored = (await session.execute(query)).scalar_one()
    replies = bot.replies("C1", "100.000001")
    assert len(replies) >= 2
    assert stored.slack_ts_all == [m.ts for m in replies]
    assert last_message(stored) == (replies[-1].ts, replies[-1].markdown)


async def test_a_status_that_lands_after_the_first_text_is_taken_down(db_url, slack, aiml):
    original: Handler | None = None
    status_sent = asyncio.Event()

    async def slow_status(params: dict[str, Any], team: str) -> dict[str, Any]:
        if params.get("status"):
            status_sent.set()
            await asyncio.sleep(0.8)  # Slack is slow; the model is fast
        assert original is not None
        return await original(params, team)

    original = slack.route("assistant.threads.setStatus", slow_status)
    # The answer's first text comes once the status call is on its way, not before it starts (the
    # status is not sent then: test_thinking_status); on a busy machine either may come first.
    aiml.enqueue(Reply(content="Four.", hold_until=status_sent))
    async with running_bot(settings(db_url, slack, aiml, "auto"), slack, aiml) as bot:
        await bot.send(mention("2+2?", "100.000001"))
        await bot.idle()
    assert bot.answer("C1", "100.000001") == "Four."
    assert [s[2] for s in slack.statuses] == ["is thinking…", ""]
    assert slack.status("C1", "100.000001") == ""


async def test_a_rate_limited_start_waits_out_retry_after_in_native_mode(db_url, slack, aiml):
    slack.fail_next("chat.startStream", error="ratelimited", status=429, retry_after=1)
    aiml.enqueue(Reply(content="Four."))
    async with running_bot(settings(db_url, slack, aiml, "native"), slack, aiml) as bot:
        await bot.send(mention("2+2?", "100.000001"))
        await bot.idle()
    starts = slack.calls_to("chat.startStream")
    assert [c.status for c in starts] == [429, 200]
    assert starts[1].time - starts[0].time >= 1.0
    assert bot.answer("C1", "100.000001") == "Four."


async def test_a_rate_limited_start_in_auto_mode_shows_the_text_as_a_message_at_once(db_url, slack, aiml):
    slack.fail_next("chat.startStream", error="ratelimited", status=429, retry_after=30)
    aiml.enqueue(Reply(content="Four."))
    async with running_bot(settings(db_url, slack, aiml, "auto"), slack, aiml) as bot:
        await bot.send(mention("2+2?", "100.000001"))
        await bot.idle(timeout=10)
    assert [c.status for c in slack.calls_to("chat.startStream")] == [429]
    [reply] = bot.replies("C1", "100.000001")
    # The first message showed the answer's first text (the chunks that came with it too), no placeholder.
    assert reply.history[0] in ("Four", "Four.")
    assert bot.answer("C1", "100.000001") == "Four."


async def test_no_placeholder_is_left_behind_when_the_status_fails_after_the_first_text(db_url, slack, aiml):
    async def slow_refusal(_params: dict[str, Any], _team: str) -> dict[str, Any]:
        await asyncio.sleep(0.5)
        raise reject("missing_scope")

    slack.route("assistant.threads.setStatus", slow_refusal)
    slack.fail_next("chat.startStream", error="ratelimited", status=429, retry_after=1)
    aiml.enqueue(Reply(content="Four."))
    async with running_bot(settings(db_url, slack, aiml, "native"), slack, aiml) as bot:
        await bot.send(mention("2+2?", "100.000001"))
        await bot.idle()
    [reply] = bot.replies("C1", "100.000001")
    assert reply.markdown == "Four."
    assert not any("Thinking" in shown for shown in reply.history)


async def test_the_first_streamed_message_is_stored_at_once_for_recovery(db_url, sessions, slack, aiml):
    # No placeholder in native mode: until the row holds the stream's ts, a replica killed now would
    # leave a message in streaming state that recovery cannot find.
    aiml.enqueue(Reply(content="one two three four five six", chunk_size=4, stall_after=3))
    async with running_bot(settings(db_url, slack, aiml, "native"), slack, aiml) as bot:
        await bot.send(mention("Count", "100.000001"))
        await eventually(lambda: bool(streaming(bot.replies("C1", "100.000001"))))
        started = time.monotonic()
        shown = streaming(bot.replies("C1", "100.000001"))

        async def stored_ts() -> list[str] | None:
            async with sessions() as session:
                query = select(Message).where(Message.role == Role.ASSISTANT)
                row: Message = (await session.execute(query)).scalar_one()
                return row.slack_ts_all

        while await stored_ts() != shown:
            assert time.monotonic() - started < 2.0, "the stream's ts was not stored within 2 s"
            await asyncio.sleep(0.05)
