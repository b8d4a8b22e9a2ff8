"""The bot end to end against Slack as it behaves in production: the default update interval, 5xx
answers and dropped connections, and channels the bot is not in."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest

from tests.fakes.aimlapi import Reply
from tests.harness import Bot, make_settings, mention, running_bot

# Slack's failures do not depend on the database: these run on SQLite only, to keep the suite quick.
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
async def bot(db_url, slack, aiml) -> AsyncIterator[Bot]:
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as running:
        yield running


async def test_with_the_default_update_interval_a_reply_is_edited_at_most_once_a_second(db_url, slack, aiml):
    pieces = [f"word{i} " for i in range(60)]
    aiml.enqueue(Reply(content=pieces, chunk_interval=0.06))  # streams for about 3.5 s
    settings = make_settings(db_url, slack, aiml, keep_defaults=("stream_update_interval",))
    assert settings.stream_update_interval == 1.0
    async with running_bot(settings, slack, aiml) as bot:
        await bot.send(mention("stream slowly", "1200.000001"))
        await bot.idle()

    [reply] = bot.replies("C1", "1200.000001")
    assert reply.markdown == "".join(pieces)
    edits = [c.time for c in slack.calls_to("chat.update") if c.ok and c.params["ts"] == reply.ts]
    assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(edits))
    assert len(edits) >= 3, "the text appeared while it streamed, not only at the end"
    shown = reply.history[1:]  # after the placeholder
    assert all("".join(pieces).startswith(text) for text in shown[:-1])


@sqlite_only
async def test_a_reply_lands_through_slack_5xx_answers_and_dropped_connections(bot, slack, aiml):
    aiml.enqueue(Reply(content=["Through ", "the ", "storm, ", "every ", "word."], chunk_interval=0.1))
    slack.fault("chat.postMessage", "reset", times=1)
    slack.fault("chat.update", "server_error", times=1, status=503)
    slack.fault("chat.update", "reset", times=1)
    await bot.send(mention("are you robust?", "1300.000001"))
    await bot.idle()

    assert bot.answer("C1", "1300.000001") == "Through the storm, every word."
    troubles = [(c.method, c.status) for c in slack.calls if c.error in ("server_error", "connection_reset")]
    assert sorted(troubles) == [("chat.postMessage", 0), ("chat.update", 0), ("chat.update", 503)]
    assert len(bot.replies("C1", "1300.000001")) == 1, "a dropped post was not posted twice"


@sqlite_only
async def test_replies_land_when_slack_fails_edits_at_random(bot, slack, aiml):
    slack.fault("chat.update", "server_error", probability=0.25, seed=3, status=500)
    slack.fault("chat.update", "reset", probability=0.1, seed=4)
    answers = {f"1400.00000{i}": " ".join(f"part{i}-{n}" for n in range(30)) for i in range(1, 4)}
    for ts, answer in answers.items():  # three threads streaming at once
        aiml.enqueue(Reply(content=answer, chunk_size=6, chunk_interval=0.03))
        await bot.send(mention("say your parts", ts))
    await bot.idle()

    failed = [c for c in slack.calls_to("chat.update") if not c.ok]
    assert failed, "Slack did fail some edits"
    # The threads reach the model in any order, so each gets one of the answers, whole.
    assert sorted(bot.answer("C1", ts) for ts in answers) == sorted(answers.values())


async def test_a_mention_in_a_channel_the_bot_is_not_in_costs_nothing_and_leaves_nothing(bot, slack, aiml):
    slack.not_joined.add("C9")
    await bot.send(mention("hello?", "1500.000001", channel="C9"))
    await bot.idle()

    assert aiml.requests == []
    assert slack.messages("C9") == []
    assert [c.error for c in slack.calls_to("chat.postMessage")] == ["not_in_channel"]
