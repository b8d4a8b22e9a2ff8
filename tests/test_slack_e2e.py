"""The Slack surface end to end: signed Events API requests through the bot's real HTTP endpoint,
the fake Slack Web API and the fake AI/ML API on loopback, and a real database."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from tests.fakes.aimlapi import ErrorReply, FakeAimlApi, Reply
from tests.fakes.slack_api import Call, FakeUser
from tests.harness import Bot, eventually, make_settings, mention, message, running_bot, signed_headers


@pytest.fixture
async def bot(db_url, slack, aiml) -> AsyncIterator[Bot]:
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as running:
        yield running


def visible_calls(calls: Sequence[Call]) -> list[str]:
    """The Slack calls a person could notice: all but auth.test (start-up and Bolt's first request)."""
    return [c.method for c in calls if c.method != "auth.test"]


def upstream_texts(aiml: FakeAimlApi, index: int = -1) -> list[str]:
    return [m["content"] for m in aiml.requests[index].json["messages"][1:]]


async def test_a_mention_is_answered_in_its_thread_without_the_mention_markup(bot, aiml):
    aiml.enqueue(Reply(content="Four.", ttft=0.3))
    started = time.monotonic()
    response = await bot.send(mention("What is 2+2?", "100.000001"))
    assert response.status_code == 200

    await eventually(lambda: len(bot.replies("C1", "100.000001")) == 1, timeout=2)
    placeholder_after = time.monotonic() - started
    await bot.idle()

    assert placeholder_after < 1.0
    assert bot.answer("C1", "100.000001") == "Four."
    assert upstream_texts(aiml) == ["What is 2+2?"]
    [reply] = bot.replies("C1", "100.000001")
    assert reply.thread_ts == "100.000001"
    assert "glm-5" in reply.context  # metadata lives in the context block, not in the answer


async def test_a_thread_reply_continues_the_conversation_without_a_new_mention(bot, aiml):
    aiml.enqueue(Reply(content="Paris."))
    aiml.enqueue(Reply(content="About two million."))
    await bot.send(mention("Capital of France?", "100.000001"))
    await bot.idle()
    await bot.send(message("How big is it?", "100.000002", thread_ts="100.000001"))
    await bot.idle()

    assert upstream_texts(aiml) == ["Capital of France?", "Paris.", "How big is it?"]
    assert [m.markdown for m in bot.replies("C1", "100.000001")] == ["Paris.", "About two million."]


async def test_messages_in_threads_the_bot_never_joined_are_ignored(bot, slack, aiml):
    await bot.send(message("chatting among people", "100.000002", thread_ts="100.000001"))
    await bot.send(message("a top-level channel message", "100.000003"))
    await bot.idle()
    assert aiml.requests == []
    assert visible_calls(slack.calls) == []


async def test_a_burst_of_events_on_a_fresh_process_asks_slack_who_it_is_only_once(db_url, slack, aiml):
    # Bolt's authorization would call auth.test per event until one answer is cached; under Slack's
    # limit some would be 429s, and Bolt drops such an event with a 200 that Slack never retries.
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as bot:
        for n in range(8):
            aiml.enqueue(Reply(content=f"Answer {n}."))
        responses = await asyncio.gather(
            *(bot.send(mention(f"Question {n}", f"{100 + n}.000001")) for n in range(8))
        )
        await bot.idle()
    assert [r.status_code for r in responses] == [200] * 8
    assert len(aiml.requests) == 8
    assert len(slack.calls_to("auth.test")) == 1  # the start-up check's


async def test_thread_followups_can_be_turned_off(db_url, slack, aiml):
    settings = make_settings(db_url, slack, aiml, thread_followups=False)
    async with running_bot(settings, slack, aiml) as bot:
        aiml.enqueue(Reply(content="Hi."))
        await bot.send(mention("Hello", "100.000001"))
        await bot.idle()
        answered = len(slack.calls)
        await bot.send(message("and now without a mention", "100.000002", thread_ts="100.000001"))
        await bot.idle()
    assert len(aiml.requests) == 1
    assert visible_calls(slack.calls[answered:]) == []


async def test_a_mention_mid_thread_reads_the_earlier_messages_once_labelled_with_their_authors(
    bot, slack, aiml
):
    slack.users["U2"] = FakeUser(real_name="Grace Hopper", display_name="grace")
    root = slack.add_message("C1", "We should pick a database.", user="U1")
    slack.add_message("C1", "I vote for PostgreSQL.", user="U2", thread_ts=root)
    aiml.enqueue(Reply(content="PostgreSQL it is."))
    aiml.enqueue(Reply(content="Sure."))
    await bot.send(mention("what do you think?", "1700000001.000000", thread_ts=root))
    await bot.idle()
    await bot.send(message("thanks", "1700000002.000000", thread_ts=root))
    await bot.idle()

    assert upstream_texts(aiml, 0) == [
        "[@U1] We should pick a database.",  # U1's name could not be looked up: the id stays
        "[@grace] I vote for PostgreSQL.",
        "what do you think?",
    ]
    assert upstream_texts(aiml, 1)[-3:] == ["what do you think?", "PostgreSQL it is.", "thanks"]
    assert len(slack.calls_to("conversations.replies")) == 1


async def test_a_rate_limited_thread_history_means_answering_without_it(bot, slack, aiml):
    root = slack.add_message("C1", "Earlier message", user="U1")
    slack.fail_next("conversations.replies", error="ratelimited", status=429, retry_after=30)
    aiml.enqueue(Reply(content="Answer anyway."))
    await bot.send(mention("help?", "1700000001.000000", thread_ts=root))
    await bot.idle()
    assert upstream_texts(aiml) == ["help?"]
    assert bot.answer("C1", root) == "Answer anyway."


async def test_a_direct_message_starts_a_conversation_answered_in_its_thread(bot, aiml):
    aiml.enqueue(Reply(content="Hello!"))
    aiml.enqueue(Reply(content="You said hi."))
    await bot.send(message("hi", "200.000001", channel="D1", channel_type="im"))
    await bot.idle()
    await bot.send(
        message("what did I say?", "200.000002", channel="D1", channel_type="im", thread_ts="200.000001")
    )
    await bot.idle()

    assert [m.markdown for m in bot.replies("D1", "200.000001")] == ["Hello!", "You said hi."]
    assert upstream_texts(aiml) == ["hi", "Hello!", "what did I say?"]


async def test_a_new_top_level_dm_is_a_new_conversation(bot, aiml):
    aiml.enqueue(Reply(content="One."))
    aiml.enqueue(Reply(content="Two."))
    await bot.send(message("first", "200.000001", channel="D1", channel_type="im"))
    await bot.idle()
    await bot.send(message("second", "200.000005", channel="D1", channel_type="im"))
    await bot.idle()
    assert upstream_texts(aiml) == ["second"]


@pytest.mark.parametrize(
    "event",
    [
        message("from the bot itself", "300.1", user="UBOT", thread_ts="300.0"),
        message("from another bot", "300.2", bot_id="B999", thread_ts="300.0"),
        message("edited", "300.3", subtype="message_changed", thread_ts="300.0"),
        message("", "300.4", subtype="message_deleted", thread_ts="300.0"),
        message("<@U1> has joined", "300.5", subtype="channel_join", thread_ts="300.0"),
    ],
    ids=["own", "other-bot", "changed", "deleted", "join"],
)
async def test_non_person_messages_are_ignored(bot, slack, aiml, event):
    aiml.enqueue(Reply(content="Joined."))
    await bot.send(mention("join this thread", "300.0"))
    await bot.idle()
    joined = len(slack.calls)
    assert (await bot.send(event)).status_code == 200
    await bot.idle()
    assert len(aiml.requests) == 1
    assert visible_calls(slack.calls[joined:]) == []


async def test_a_file_share_is_a_person_writing(bot, aiml):
    aiml.enqueue(Reply(content="Joined."))
    aiml.enqueue(Reply(content="Nice file."))
    await bot.send(mention("join", "300.0"))
    await bot.idle()
    await bot.send(message("look at this", "300.1", subtype="file_share", thread_ts="300.0"))
    await bot.idle()
    assert len(aiml.requests) == 2


async def test_retries_and_the_message_twin_give_exactly_one_reply(bot, slack, aiml):
    aiml.enqueue(Reply(content="Once.", ttft=0.2))
    event = mention("answer once", "400.000001")
    twin = message("<@UBOT> answer once", "400.000001")
    responses = [await bot.send(event, event_id="EvSAME")]
    responses += [await bot.send(event, event_id="EvSAME", retry_num=n) for n in (1, 2, 3)]
    responses.append(await bot.send(twin, event_id="EvTWIN"))
    await bot.idle()

    assert all(r.status_code == 200 for r in responses)
    assert len(aiml.requests) == 1
    assert len(bot.replies("C1", "400.000001")) == 1
    assert len(slack.calls_to("chat.postMessage")) == 1


async def test_a_retry_after_a_restart_is_still_answered_once(db_url, slack, aiml):
    aiml.enqueue(Reply(content="Once."))
    event = mention("answer once", "400.000001")
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as bot:
        await bot.send(event, event_id="EvRESTART")
        await bot.idle()
    answered = len(slack.calls)
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as bot:
        await bot.send(event, event_id="EvRESTART", retry_num=2)
        await bot.idle()
    assert len(aiml.requests) == 1
    assert visible_calls(slack.calls[answered:]) == []


async def test_bad_or_stale_signatures_get_401_and_nothing_else(bot, slack, aiml):
    body = json.dumps(
        {"type": "event_callback", "team_id": "T1", "event_id": "EvBAD", "event": mention("hi", "500.1")}
    )
    forged = signed_headers(body, secret="not-the-secret")
    stale = signed_headers(body, timestamp=int(time.time()) - 600)
    for headers in (forged, stale, {"Content-Type": "application/json"}):
        response = await bot.http.post("/slack/events", content=body, headers=headers)
        assert response.status_code == 401
    await bot.idle()
    assert aiml.requests == []
    assert visible_calls(slack.calls) == []


async def test_malformed_bodies_and_unknown_events_do_not_crash_the_bot(bot, aiml):
    garbage = "{not json"
    response = await bot.http.post("/slack/events", content=garbage, headers=signed_headers(garbage))
    assert response.status_code == 400
    unknown = await bot.send({"type": "reaction_added", "user": "U1", "reaction": "tada"})
    assert unknown.status_code == 200
    no_event = json.dumps({"type": "event_callback", "team_id": "T1", "event_id": "EvX"})
    response = await bot.http.post("/slack/events", content=no_event, headers=signed_headers(no_event))
    assert response.status_code == 404  # Bolt's answer to a request no listener matches
    await bot.idle()
    assert aiml.requests == []

    aiml.enqueue(Reply(content="Still here."))
    await bot.send(mention("are you alive?", "600.1"))
    await bot.idle()
    assert bot.answer("C1", "600.1") == "Still here."


async def test_url_verification_is_answered(bot):
    body = json.dumps({"type": "url_verification", "challenge": "abc123", "token": "legacy"})
    response = await bot.http.post("/slack/events", content=body, headers=signed_headers(body))
    assert response.status_code == 200 and "abc123" in response.text


async def test_slack_user_mentions_reach_the_model_as_names(bot, slack, aiml):
    slack.users["U2"] = FakeUser(real_name="Grace Hopper", display_name="grace")
    aiml.enqueue(Reply(content="Hi Grace."))
    await bot.send(mention("say hi to <@U2>", "700.1"))
    await bot.idle()
    assert upstream_texts(aiml) == ["say hi to @grace"]


async def test_a_mid_stream_disconnect_ends_the_message_with_a_note(bot, aiml):
    aiml.enqueue(Reply(content="Part one. Part two. Part three.", chunk_size=10, disconnect_after=1))
    await bot.send(mention("tell me", "800.1"))
    await bot.idle()
    [reply] = bot.replies("C1", "800.1")
    assert reply.markdown == "Part one. "
    assert reply.context  # the human note
    assert "Thinking" not in reply.text


async def test_out_of_credits_is_explained_in_the_thread(bot, aiml):
    aiml.enqueue(ErrorReply(status=403, message="You've run out of credits. Please top up your balance"))
    await bot.send(mention("hello", "900.1"))
    await bot.idle()
    [reply] = bot.replies("C1", "900.1")
    assert "credit" in (reply.text + reply.context).lower()
    assert reply.markdown == ""


async def test_health_and_metrics_are_served(bot, aiml):
    aiml.enqueue(Reply(content="Counted.", credits_used=1500))
    aiml.enqueue(ErrorReply(status=403, message="You've run out of credits. Please top up your balance"))
    await bot.send(mention("count me", "950.1"))
    await bot.idle()
    await bot.send(mention("and me", "950.2"))
    await bot.send(message("not for the bot", "950.3"))
    await bot.idle()

    health = await bot.http.get("/healthz")
    assert health.status_code == 200
    assert health.json()["database"] == "ok"
    metrics = (await bot.http.get("/metrics")).text
    for line in (
        'slackbot_replies_total{outcome="complete"} 1.0',
        'slackbot_replies_total{outcome="error"} 1.0',
        'slackbot_upstream_errors_total{kind="credits"} 1.0',
        'slackbot_events_received_total{type="app_mention"} 2.0',
        'slackbot_events_ignored_total{reason="not_addressed"} 1.0',
        "slackbot_credits_used_total 1500.0",
        'slackbot_slack_calls_total{method="chat.update",outcome="ok"}',
        "slackbot_time_to_first_token_seconds_count 1.0",
        "slackbot_reply_duration_seconds_count 2.0",
        "slackbot_active_streams 0.0",
    ):
        assert line in metrics


async def test_a_10000_character_answer_with_code_spans_messages_that_join_to_the_answer(bot, aiml):
    prose = "\n\n".join(f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 12 for i in range(12))
    code = "```python\n" + "\n".join(f"value_{i} = compute({i})  # step {i}" for i in range(60)) + "\n```\n"
    answer = (prose + "\n\n" + code + "\n" + prose)[:10_000]
    aiml.enqueue(Reply(content=answer, chunk_size=200))
    await bot.send(mention("write a lot", "1000.1"))
    await bot.idle(timeout=30)

    replies = bot.replies("C1", "1000.1")
    assert len(replies) >= 3
    assert all(len(m.text) <= 4000 for m in replies)
    assert bot.answer("C1", "1000.1") == answer
    for part in (m.markdown for m in replies):
        assert part.count("```") % 2 == 0  # no message leaves a code block open


async def test_three_429s_in_a_row_on_chat_update_still_land_the_final_text(bot, slack, aiml):
    aiml.enqueue(Reply(content="Rate limits are no match for me.", chunk_size=4, chunk_interval=0.02))
    slack.fail_next("chat.update", error="ratelimited", status=429, retry_after=1, times=3)
    await bot.send(mention("go", "1100.1"))
    await bot.idle(timeout=30)
    assert bot.answer("C1", "1100.1") == "Rate limits are no match for me."
    assert slack.count_429s == 3


async def test_a_follow_up_sent_while_the_first_reply_is_set_up_is_answered_after_it(db_url, slack, aiml):
    slack.latency = lambda _method: 0.3  # a slow Slack: the placeholder and thread history take a while
    root = slack.add_message("C1", "Context before the bot joined", user="U2")
    aiml.enqueue(Reply(content="First."))
    aiml.enqueue(Reply(content="Second."))
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as bot:
        await bot.send(mention("first question", "1700000001.000000", thread_ts=root))
        await eventually(lambda: slack.idle_since is None)  # Slack is busy with the first reply
        await bot.send(message("a follow-up", "1700000002.000000", thread_ts=root))
        await bot.idle(timeout=20)
    assert [r.json["messages"][-1]["content"] for r in aiml.requests] == ["first question", "a follow-up"]
    assert upstream_texts(aiml)[-3:] == ["first question", "First.", "a follow-up"]


async def test_backfill_takes_the_root_and_the_newest_messages_before_the_mention(db_url, slack, aiml):
    root = slack.add_message("C1", "root message", user="U2")
    last = root
    for i in range(30):
        last = slack.add_message("C1", f"reply {i}", user="U2", thread_ts=root)
    seconds, micros = last.split(".")
    mention_ts = f"{seconds}.{int(micros) + 50:06d}"  # between the last reply and the next message
    slack.add_message("C1", "written after the mention", user="U3", thread_ts=root)
    aiml.enqueue(Reply(content="Caught up."))
    settings = make_settings(db_url, slack, aiml, thread_backfill_limit=5)
    async with running_bot(settings, slack, aiml) as bot:
        await bot.send(mention("summarize", mention_ts, thread_ts=root))
        await bot.idle()
    assert upstream_texts(aiml) == [
        "[@U2] root message",
        "[@U2] reply 25",
        "[@U2] reply 26",
        "[@U2] reply 27",
        "[@U2] reply 28",
        "[@U2] reply 29",
        "summarize",
    ]


async def test_shutdown_ends_a_turn_queued_behind_another_with_a_note(db_url, slack, aiml):
    # The queued turn has posted nothing yet (its turn has not come). SQLite: at shutdown it says it
    # was cut. PostgreSQL: it is handed off, and the next process (another replica) answers it.
    aiml.enqueue(Reply(content="word " * 200, chunk_size=5, chunk_interval=0.05))
    aiml.enqueue(Reply(content="answered after the restart"))
    settings = make_settings(db_url, slack, aiml, shutdown_grace_seconds=0.5)
    async with running_bot(settings, slack, aiml) as bot:
        await bot.send(mention("long story", "1900.000001"))
        await eventually(lambda: "word" in bot.answer("C1", "1900.000001"), 10)
        await bot.send(message("and another thing", "1900.000002", thread_ts="1900.000001"))
        await eventually(lambda: len(slack.statuses) == 1, 10)  # it waits for the first answer
    if db_url.startswith("postgresql"):
        [first] = bot.replies("C1", "1900.000001")
        assert "interrupted" in first.context.lower()
        async with running_bot(settings, slack, aiml) as bot:
            await eventually(lambda: len(bot.replies("C1", "1900.000001")) == 2, 25)
            await bot.idle()
        assert "answered after the restart" in bot.replies("C1", "1900.000001")[1].text
        assert len(aiml.requests) == 2
        return
    first, queued = bot.replies("C1", "1900.000001")
    for reply in (first, queued):
        assert "Thinking" not in reply.text
        assert "interrupted" in reply.context.lower()
    assert len(aiml.requests) == 1
