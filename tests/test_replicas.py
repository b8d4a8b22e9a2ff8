"""Two bot replicas on one PostgreSQL database, in one test process: a thread's turns run one at a time
in admission order whichever replica admitted them, a Stop pressed on either replica stops the
answer, a dead replica's place does not block the thread, and the LISTEN connection comes back after
PostgreSQL kills it."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.storage.db import create_engine, session_factory
from bot.storage.models import Conversation, ProcessedEvent, TurnPlace, utcnow
from bot.storage.signals import APPLICATION_NAME, SignalHub, asyncpg_dsn, notify
from tests.fakes.aimlapi import ErrorReply, FakeAimlApi, Reply
from tests.fakes.slack_api import FakeSlackApi, FakeUser
from tests.harness import (
    Bot,
    agent_session_stopped,
    eventually,
    history,
    make_settings,
    mention,
    message,
    running_bot,
    until,
)
from tests.test_stop import STALLING, closed_promptly, press_stop, stop_buttons, streaming_reply

# Replicas share PostgreSQL; SQLite runs one process (its ordering: tests/test_thread_turns.py).
pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)]

ROOT = "1700000001.000000"
ASKER, STRANGER = "U1", "U2"


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(db_url)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
async def replicas(db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi) -> AsyncIterator[tuple[Bot, Bot]]:
    slack.users[ASKER] = FakeUser(real_name="Ada Lovelace", display_name="ada")
    slack.users[STRANGER] = FakeUser(real_name="Charles Babbage", display_name="charles")
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(running_bot(make_settings(db_url, slack, aiml), slack, aiml))
        b = await stack.enter_async_context(running_bot(make_settings(db_url, slack, aiml), slack, aiml))
        yield a, b


async def count(sessions: async_sessionmaker[AsyncSession], model: type[Any]) -> int:
    async with sessions() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def idle(*bots: Bot) -> None:
    for bot in bots:
        await bot.idle(timeout=30)


async def test_a_threads_messages_sent_to_alternate_replicas_are_answered_one_at_a_time_in_order(
    replicas: tuple[Bot, Bot], aiml: FakeAimlApi, database: async_sessionmaker[AsyncSession]
) -> None:
    a, b = replicas
    answers = [f"Answer {i} " + "word " * 6 for i in range(4)]
    # Slow enough that every later message is admitted while an earlier answer still streams.
    aiml.enqueue(*(Reply(content=answer, chunk_size=5, chunk_interval=0.08) for answer in answers))
    questions = ["first question", "second", "third", "fourth"]
    for i, (bot, question) in enumerate(zip([a, b, a, b], questions, strict=True)):
        ts = f"1700000001.00000{i}"
        event = mention(question, ROOT) if i == 0 else message(question, ts, thread_ts=ROOT)
        await bot.send(event)
        await until(functools.partial(_claimed, database, i + 1))  # admitted before the next one is sent
    await idle(a, b)

    requests = aiml.chat_requests
    assert len(requests) == 4
    for i in range(4):
        earlier = [text for pair in zip(questions[:i], answers[:i], strict=True) for text in pair]
        assert history(aiml, i) == [*earlier, questions[i]]  # every earlier final answer
    for before, after in itertools.pairwise(requests):
        assert after.received_at > before.content_sent_at[-1]  # one at a time
    assert [m.markdown for m in a.replies("C1", ROOT)] == answers
    assert await count(database, TurnPlace) == 0  # every turn left its place


async def _claimed(database: async_sessionmaker[AsyncSession], n: int) -> bool:
    return await count(database, ProcessedEvent) >= n


async def test_the_stop_button_pressed_on_another_replica_stops_the_answer_at_once(
    replicas: tuple[Bot, Bot], slack: FakeSlackApi, aiml: FakeAimlApi
) -> None:
    a, b = replicas
    aiml.enqueue(STALLING)
    await a.send(mention("count to six", ROOT, user=ASKER))
    shown = await streaming_reply(a, "one two thre", thread=ROOT)

    response = await b.interact(press_stop(shown, ASKER))

    assert response.status_code == 200
    assert await closed_promptly(aiml.chat_requests[-1], seconds=2.0)
    await idle(a, b)
    [final] = a.replies("C1", ROOT)
    assert final.markdown == "one two thre"
    assert "Stopped by ada" in final.context
    assert stop_buttons(final) == []
    assert slack.ephemerals == []


async def test_a_stranger_pressing_stop_on_another_replica_is_told_who_can_and_the_answer_goes_on(
    replicas: tuple[Bot, Bot], slack: FakeSlackApi, aiml: FakeAimlApi
) -> None:
    a, b = replicas
    content = "a slow but complete answer, piece by piece"
    aiml.enqueue(Reply(content=content, chunk_size=4, chunk_interval=0.15))
    await a.send(mention("explain slowly", ROOT, user=ASKER))
    shown = await streaming_reply(a, "a sl", thread=ROOT)

    await b.interact(press_stop(shown, STRANGER))
    await idle(a, b)

    [refusal] = slack.ephemerals
    assert (refusal.user, refusal.text) == (STRANGER, "Only ada or an admin can stop this answer.")
    [final] = a.replies("C1", ROOT)
    assert final.markdown == content
    assert "Stopped" not in final.context


async def test_the_agent_sessions_stop_on_another_replica_stops_the_answer_and_ends_processing_once(
    replicas: tuple[Bot, Bot], slack: FakeSlackApi, aiml: FakeAimlApi
) -> None:
    a, b = replicas
    aiml.enqueue(STALLING)
    await a.send(message("count to six", ROOT, channel="D1", channel_type="im", user=ASKER))
    shown = await streaming_reply(a, "one two thre", thread=ROOT, channel="D1")

    await b.send(agent_session_stopped("D1", ROOT, user=ASKER))

    assert await closed_promptly(aiml.chat_requests[-1], seconds=2.0)
    await idle(a, b)
    assert "Stopped by ada" in slack.message("D1", shown.ts).context
    assert slack.session_statuses == [("D1", ROOT, "processing"), ("D1", ROOT, "active")]


async def test_a_place_whose_replica_stopped_renewing_it_blocks_the_thread_only_until_its_lease_ends(
    replicas: tuple[Bot, Bot], aiml: FakeAimlApi, database: async_sessionmaker[AsyncSession]
) -> None:
    a, _ = replicas
    aiml.enqueue(Reply(content="First."), Reply(content="Second."))
    await a.send(mention("first question", ROOT))
    await a.idle()
    # A replica that died holding the thread: its place's lease runs out in 1.5 s, never renewed.
    async with database.begin() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
        lease_ends = utcnow() + timedelta(seconds=1.5)
        session.add(TurnPlace(conversation_id=conversation.id, holder="dead", expires_at=lease_ends))

    await a.send(message("a follow-up", "1700000002.000000", thread_ts=ROOT))
    await eventually(lambda: len(aiml.chat_requests) == 2, timeout=6)
    await a.idle()

    assert utcnow() >= lease_ends  # it waited for the lease, not for a poll long after it
    assert history(aiml, 1) == ["first question", "First.", "a follow-up"]
    assert a.replies("C1", ROOT)[-1].markdown == "Second."


async def _places(database: async_sessionmaker[AsyncSession], n: int) -> bool:
    return await count(database, TurnPlace) == n


async def test_a_turn_waiting_on_another_replica_starts_soon_after_the_listener_was_killed(
    replicas: tuple[Bot, Bot], aiml: FakeAimlApi, database: async_sessionmaker[AsyncSession]
) -> None:
    a, b = replicas
    aiml.enqueue(Reply(content="slow " * 10, chunk_size=5, chunk_interval=0.3), Reply(content="Next."))
    await a.send(mention("first question", ROOT))
    await eventually(lambda: len(aiml.chat_requests) == 1)
    await b.send(message("second", "1700000002.000000", thread_ts=ROOT))
    await until(lambda: _places(database, 2))
    assert b.runtime.replicas is not None
    hub = b.runtime.replicas.signals
    await _kill_listeners(database)
    await eventually(lambda: not hub.connected, timeout=5)

    await eventually(lambda: len(aiml.chat_requests) == 2, timeout=10)
    first_done = aiml.chat_requests[0].content_sent_at[-1]
    # Signalled again once reconnected, or polled every second meanwhile: not the 5 s slow poll.
    assert aiml.chat_requests[1].received_at - first_done < 2.5
    await idle(a, b)
    assert b.replies("C1", ROOT)[-1].markdown == "Next."


async def _kill_listeners(database: async_sessionmaker[AsyncSession]) -> int:
    async with database() as session:
        killed = await session.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE :name"
            ),
            {"name": f"{APPLICATION_NAME}%"},
        )
        return len(killed.all())


async def test_the_signal_hub_listens_again_after_postgresql_kills_its_connection(
    db_url: str, database: async_sessionmaker[AsyncSession]
) -> None:
    received: list[str | None] = []
    hub = SignalHub(asyncpg_dsn(db_url), reconnect_every=0.2)
    hub.subscribe("test_channel", received.append)
    hub.start()
    try:
        await eventually(lambda: hub.connected, timeout=5)
        assert await _kill_listeners(database) == 1
        await eventually(lambda: hub.connects == 2 and hub.connected, timeout=5)
        async with database.begin() as session:
            await notify(session, "test_channel", "after the outage")
        await eventually(lambda: "after the outage" in received, timeout=5)
    finally:
        await hub.aclose()
    # On reconnecting every subscriber was told that signals may have been missed.
    assert received.count(None) == 2  # the first connect, and the reconnect
    assert not hub.connected


async def test_a_draining_replica_sends_new_events_to_another_and_still_obeys_a_stop_press(
    replicas: tuple[Bot, Bot], aiml: FakeAimlApi
) -> None:
    a, b = replicas
    other_thread = "1700000009.000000"
    aiml.enqueue(STALLING, Reply(content="Answered by the other replica."))
    await b.send(mention("count to six", ROOT, user=ASKER))
    shown = await streaming_reply(b, "one two thre", thread=ROOT)

    stopping = asyncio.create_task(b.runtime.stop())
    try:
        await until(lambda: _not_ready(b))
        refused = await b.send(mention("a new question", other_thread), event_id="EvDraining")
        retried = await a.send(mention("a new question", other_thread), event_id="EvDraining", retry_num=1)
        pressed = await b.interact(press_stop(shown, ASKER))  # Slack does not retry interactions
    finally:
        await stopping

    assert (refused.status_code, retried.status_code, pressed.status_code) == (503, 200, 200)
    await a.idle(timeout=30)
    [stopped] = b.replies("C1", ROOT)
    assert "Stopped by ada" in stopped.context
    assert a.answer("C1", other_thread) == "Answered by the other replica."


async def _not_ready(bot: Bot) -> bool:
    return (await bot.http.get("/readyz")).status_code == 503


async def test_refused_and_failed_turns_give_their_places_up_and_the_thread_goes_on(
    db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi, database: async_sessionmaker[AsyncSession]
) -> None:
    settings = make_settings(db_url, slack, aiml, blocked_users="U9")
    aiml.enqueue(Reply(content="First."), ErrorReply(status=401, message="bad key"), Reply(content="Last."))
    async with running_bot(settings, slack, aiml) as a, running_bot(settings, slack, aiml) as b:
        await a.send(mention("first question", ROOT))
        await a.idle()
        await b.send(message("let me in", "1700000002.000000", thread_ts=ROOT, user="U9"))  # refused
        await a.send(message("this one fails", "1700000003.000000", thread_ts=ROOT))
        await idle(a, b)
        assert await count(database, TurnPlace) == 0
        started = time.monotonic()
        await b.send(message("and this one?", "1700000004.000000", thread_ts=ROOT))
        await eventually(lambda: len(aiml.chat_requests) == 3, timeout=5)
        waited = time.monotonic() - started
        await idle(a, b)

    assert waited < 2.0  # no place left behind that it had to wait out
    assert b.replies("C1", ROOT)[-1].markdown == "Last."
    assert await count(database, TurnPlace) == 0


async def test_follow_ups_sent_at_once_to_both_replicas_are_answered_in_the_order_they_were_admitted(
    replicas: tuple[Bot, Bot], aiml: FakeAimlApi, database: async_sessionmaker[AsyncSession]
) -> None:
    a, b = replicas
    aiml.default = Reply(content="An answer that takes a moment.", chunk_size=6, chunk_interval=0.02)
    await a.send(mention("first question", ROOT))
    await eventually(lambda: len(aiml.chat_requests) == 1)
    questions = {f"1700000002.00000{i}": f"follow-up {i}" for i in range(6)}
    sends = [
        (a if i % 2 else b).send(message(question, ts, thread_ts=ROOT))
        for i, (ts, question) in enumerate(questions.items())
    ]
    await asyncio.gather(*sends)  # all at once: which replica admits which first is up to them
    await idle(a, b)

    async with database() as session:
        claimed = (await session.execute(select(ProcessedEvent.message_ts).order_by(ProcessedEvent.id))).all()
    admitted = [questions[ts] for (ts,) in claimed if ts in questions]
    asked = [history(aiml, i)[-1] for i in range(1, 7)]
    assert asked == admitted  # answered in admission order, whichever replica ran each
    requests = aiml.chat_requests
    for i in range(1, 7):  # each saw every earlier question and final answer
        assert history(aiml, i) == [*history(aiml, i - 1), "An answer that takes a moment.", asked[i - 1]]
    for before, after in itertools.pairwise(requests):
        assert after.received_at > before.content_sent_at[-1]
