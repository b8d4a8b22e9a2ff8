"""Turns of one thread through the real endpoint: answered in the order they were admitted, each
answer's messages together, a waiting turn visible, and the turn gauges on /metrics."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from bot.slack.handler import STATUS_WAITING
from tests.fakes.aimlapi import ErrorReply, FakeAimlApi, Reply
from tests.fakes.slack_api import FakeSlackApi
from tests.harness import Bot, eventually, make_settings, mention, message, running_bot

ROOT = "1700000001.000000"
LONG_ANSWER = "".join(f"Sentence number {i} of a long first answer. " for i in range(220))  # ~9,500


class SlowFirstPost:
    """Slack is slow to accept the bot's first chat.postMessage: it is held until `release` is set."""

    def __init__(self, slack: FakeSlackApi) -> None:
        self.arrived, self.release = asyncio.Event(), asyncio.Event()
        original = slack.route("chat.postMessage", self._held)
        assert original is not None
        self._original = original

    async def _held(self, params: dict[str, Any], team: str) -> dict[str, Any]:
        if not self.arrived.is_set():
            self.arrived.set()
            await self.release.wait()
        return await self._original(params, team)


def upstream_texts(aiml: FakeAimlApi, index: int) -> list[str]:
    return [m["content"] for m in aiml.requests[index].json["messages"][1:]]


async def metric(bot: Bot, name: str) -> float:
    text = (await bot.http.get("/metrics")).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} is not exported"
    return float(found.group(1))


async def test_a_follow_up_waits_for_the_first_answer_when_slack_is_slow_to_show_it(db_url, slack, aiml):
    slow = SlowFirstPost(slack)
    aiml.enqueue(Reply(content=LONG_ANSWER, chunk_size=400))
    aiml.enqueue(Reply(content="Second answer."))
    async with running_bot(make_settings(db_url, slack, aiml), slack) as bot:
        await bot.send(mention("first question", ROOT))
        await asyncio.wait_for(slow.arrived.wait(), 20)
        await bot.send(message("a follow-up", "1700000002.000000", thread_ts=ROOT))
        # Hold the first placeholder until the follow-up has either overtaken it (it asked the
        # model) or visibly waits for its turn; then let Slack accept it.
        await eventually(lambda: bool(slack.statuses) or bool(aiml.requests), 20)
        slow.release.set()
        await bot.idle(timeout=30)

    assert len(aiml.requests) == 2
    assert upstream_texts(aiml, 1) == ["first question", LONG_ANSWER, "a follow-up"]
    replies = bot.replies("C1", ROOT)
    assert len(replies) >= 3  # the long answer spans several messages
    assert "".join(m.markdown for m in replies[:-1]) == LONG_ANSWER
    assert replies[-1].markdown == "Second answer."
    # While it waited, the thread said so, once, without touching the edit budget.
    assert slack.statuses == [("C1", ROOT, STATUS_WAITING)]


async def test_a_turn_admitted_while_another_streams_posts_nothing_until_that_answer_is_complete(
    db_url, slack, aiml
):
    aiml.enqueue(Reply(content=LONG_ANSWER, chunk_size=200, chunk_interval=0.05))
    aiml.enqueue(Reply(content="Second answer."))
    async with running_bot(make_settings(db_url, slack, aiml), slack) as bot:
        await bot.send(mention("first question", ROOT))
        await eventually(lambda: "Sentence number 1 " in bot.answer("C1", ROOT), 20)
        await bot.send(message("a follow-up", "1700000002.000000", thread_ts=ROOT))
        await bot.idle(timeout=30)

    replies = bot.replies("C1", ROOT)
    assert "".join(m.markdown for m in replies[:-1]) == LONG_ANSWER
    assert replies[-1].markdown == "Second answer."
    # The follow-up's first message was posted after the first answer's last edit had landed.
    first_parts = {m.ts for m in replies[:-1]}
    last_edit = max(c.time for c in slack.calls_to("chat.update") if c.params.get("ts") in first_parts)
    assert slack.calls_to("chat.postMessage")[-1].time >= last_edit


async def test_turn_gauges_count_waiting_and_running_turns_and_return_to_zero_after_an_error(
    db_url, slack, aiml
):
    aiml.enqueue(Reply(content="word " * 200, chunk_size=5, chunk_interval=0.05))  # ~10 s
    aiml.enqueue(ErrorReply(status=400))
    async with running_bot(make_settings(db_url, slack, aiml), slack) as bot:
        assert await metric(bot, "slackbot_turns_running") == 0
        await bot.send(mention("long story", ROOT))
        await eventually(lambda: "word" in bot.answer("C1", ROOT), 10)
        await bot.send(message("and another thing", "1700000002.000000", thread_ts=ROOT))
        await eventually(lambda: bool(slack.statuses), 10)
        assert await metric(bot, "slackbot_turns_running") == 1
        assert await metric(bot, "slackbot_turns_waiting") == 1
        await bot.idle(timeout=30)
        assert "Something" not in bot.answer("C1", ROOT)
        assert await metric(bot, "slackbot_turns_running") == 0
        assert await metric(bot, "slackbot_turns_waiting") == 0
    assert len(aiml.requests) == 2 and aiml.requests[1].status == 400


async def test_turn_gauges_return_to_zero_when_shutdown_cancels_running_and_queued_turns(db_url, slack, aiml):
    aiml.enqueue(Reply(content="word " * 200, chunk_size=5, chunk_interval=0.05))
    settings = make_settings(db_url, slack, aiml, shutdown_grace_seconds=0.3)
    async with running_bot(settings, slack) as bot:
        await bot.send(mention("long story", ROOT))
        await eventually(lambda: "word" in bot.answer("C1", ROOT), 10)
        await bot.send(message("and another thing", "1700000002.000000", thread_ts=ROOT))
        await eventually(lambda: bool(slack.statuses), 10)
        gauges = bot.runtime.metrics
    exported = gauges.render().decode()
    assert "slackbot_turns_running 0.0" in exported
    assert "slackbot_turns_waiting 0.0" in exported
