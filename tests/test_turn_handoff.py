"""Turns handed from one replica to another on one PostgreSQL database: a turn admitted and waiting
on a replica that dies (kill -9: it stops renewing its places) or drains (SIGTERM) is answered by
another replica, in its thread's order, once; a turn whose reply had started is never run again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.app import BotRuntime
from bot.conversation.admission import Admission, Admitted, Arrival, Refused
from bot.conversation.handoff import from_record, to_record
from bot.conversation.keys import ConversationKey, ConversationKind
from bot.conversation.service import NOTE_INTERRUPTED, NOTE_TAKEN_OVER
from bot.conversation.shared_order import SharedTicket, SharedTurnOrder
from bot.slack.recovery import NOTE_RESTARTED
from bot.storage import turn_places as repo
from bot.storage.db import create_engine, session_factory
from bot.storage.models import Conversation, Message, MessageStatus, Role, TurnPlace, utcnow
from bot.storage.signals import SignalHub, asyncpg_dsn, notify
from tests.fakes.aimlapi import FakeAimlApi, Reply
from tests.fakes.slack_api import FakeSlackApi
from tests.harness import Bot, eventually, history, make_settings, mention, message, running_bot, until
from tests.stages import Hesitant, Nobody

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)]

ROOT = "1700000001.000000"
LEASE = timedelta(seconds=30)


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(db_url)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
async def replicas(db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi) -> AsyncIterator[tuple[Bot, Bot]]:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(running_bot(make_settings(db_url, slack, aiml), slack, aiml))
        b = await stack.enter_async_context(running_bot(make_settings(db_url, slack, aiml), slack, aiml))
        yield a, b


async def places(database: async_sessionmaker[AsyncSession]) -> int:
    async with database() as session:
        return int((await session.execute(select(func.count()).select_from(TurnPlace))).scalar_one())


async def kill(runtime: BotRuntime, database: async_sessionmaker[AsyncSession]) -> None:
    """What kill -9 leaves behind, as the others see it: the replica's places are not renewed, and
    their leases have run out."""
    assert runtime.replicas is not None
    order = runtime.replicas.order
    renewer = order._renewer
    assert renewer is not None
    renewer.cancel()
    async with database.begin() as session:
        await session.execute(
            update(TurnPlace).where(TurnPlace.holder == order.holder).values(expires_at=func.now())
        )


def interrupted(bot: Bot) -> bool:
    return any(NOTE_INTERRUPTED in m.context for m in bot.replies("C1", ROOT))


async def test_a_turn_waiting_on_a_replica_that_died_is_answered_by_another_in_order_once(
    replicas: tuple[Bot, Bot], aiml: FakeAimlApi, database: async_sessionmaker[AsyncSession]
) -> None:
    a, b = replicas
    slow = " ".join(["slow"] * 12)
    aiml.enqueue(Reply(content=slow, chunk_size=5, chunk_interval=0.1), Reply(content="Second."))
    aiml.enqueue(Reply(content="Third."))
    await a.send(mention("first question", ROOT))
    await eventually(lambda: len(aiml.chat_requests) == 1)
    await b.send(message("second", "1700000002.000000", thread_ts=ROOT))
    await until(lambda: _count_is(database, 2))
    await kill(b.runtime, database)

    # A turn behind the dead replica's waits for it to be adopted, not past it.
    await a.send(message("third", "1700000003.000000", thread_ts=ROOT))
    await eventually(lambda: len(aiml.chat_requests) == 3, timeout=15)
    await a.idle(timeout=30)
    await b.idle(timeout=30)

    assert len(aiml.chat_requests) == 3  # the second once, by a
    assert history(aiml, 1) == ["first question", slow, "second"]
    assert history(aiml, 2) == ["first question", slow, "second", "Second.", "third"]
    assert [m.markdown.strip() for m in a.replies("C1", ROOT)] == [slow, "Second.", "Third."]
    assert not interrupted(a)
    assert await places(database) == 0


async def _thread(session: AsyncSession) -> Conversation:
    """The conversation of the thread at ROOT, stored."""
    conversation = Conversation(team_id="T1", channel_id="C1", thread_ts=ROOT, kind=ConversationKind.CHANNEL)
    session.add(conversation)
    await session.flush()
    return conversation


async def _count_is(database: async_sessionmaker[AsyncSession], n: int) -> bool:
    return await places(database) == n


async def test_a_draining_replicas_waiting_turn_is_answered_by_the_other_replica_not_noted_interrupted(
    db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi, database: async_sessionmaker[AsyncSession]
) -> None:
    settings = make_settings(db_url, slack, aiml)  # a 2 s grace period
    slow = " ".join(["slow"] * 30)
    aiml.enqueue(Reply(content=slow, chunk_size=5, chunk_interval=0.15), Reply(content="Second."))
    async with running_bot(settings, slack, aiml) as a:
        async with running_bot(settings, slack, aiml) as b:
            await a.send(mention("first question", ROOT))
            await eventually(lambda: len(aiml.chat_requests) == 1)
            await b.send(message("second", "1700000002.000000", thread_ts=ROOT))
            await until(lambda: _count_is(database, 2))
            stopping = time.monotonic()
        stopped_in = time.monotonic() - stopping
        assert len(aiml.chat_requests) == 1  # the first answer still streams on a
        await a.idle(timeout=30)

    assert stopped_in < 2.0  # handed off at once, not held for the grace period
    assert len(aiml.chat_requests) == 2
    assert history(aiml, 1) == ["first question", slow, "second"]
    assert [m.markdown.strip() for m in a.replies("C1", ROOT)] == [slow, "Second."]
    assert not interrupted(a)
    assert await places(database) == 0


async def test_a_turn_whose_reply_started_on_a_replica_taken_for_dead_is_not_run_again(
    replicas: tuple[Bot, Bot], aiml: FakeAimlApi, database: async_sessionmaker[AsyncSession]
) -> None:
    a, b = replicas
    aiml.enqueue(Reply(content="slow " * 10, chunk_size=5, chunk_interval=0.1), Reply(content="Again?"))
    await b.send(mention("first question", ROOT))
    await eventually(lambda: len(aiml.chat_requests) == 1)
    await kill(b.runtime, database)
    async with database.begin() as session:
        await notify(session, repo.TURNS_HANDED_OFF, "")  # a looks for orphans at once

    await asyncio.sleep(1.0)
    await a.idle(timeout=30)
    await b.idle(timeout=30)

    assert len(aiml.chat_requests) == 1


async def test_a_turn_whose_replica_died_before_storing_its_reply_is_answered_by_another(
    replicas: tuple[Bot, Bot], aiml: FakeAimlApi, database: async_sessionmaker[AsyncSession]
) -> None:
    a, b = replicas
    aiml.enqueue(Reply(content="Answered elsewhere."))
    assert b.runtime.turns is not None
    service = b.runtime.turns._service  # b freezes where a kill would leave nothing
    frozen = asyncio.Event()

    async def dies_before_storing(*_args: object) -> None:
        frozen.set()
        await asyncio.Event().wait()

    service._begin = dies_before_storing  # type: ignore[method-assign,assignment]
    await b.send(mention("a question", ROOT))
    await asyncio.wait_for(frozen.wait(), 10)  # started: its status is up, nothing is stored
    await kill(b.runtime, database)
    assert b.runtime.replicas is not None
    b.runtime.replicas.order._adopter = None  # dead: it adopts nothing (not its own turn)
    async with database.begin() as session:
        await notify(session, repo.TURNS_HANDED_OFF, "")  # a looks for orphans at once

    # (b's frozen task never ends, so neither bot is ever idle: watch the thread instead.) b had
    # posted its placeholder before it froze: a answers in that message, leaving no "Thinking…".
    [placeholder] = a.replies("C1", ROOT)
    await eventually(
        lambda: [m.markdown.strip() for m in a.replies("C1", ROOT)] == ["Answered elsewhere."], timeout=20
    )
    assert [m.ts for m in a.replies("C1", ROOT)] == [placeholder.ts]
    assert len(aiml.chat_requests) == 1
    assert history(aiml, 0) == ["a question"]


async def test_a_replica_that_stalled_past_its_lease_leaves_the_adopters_answer_in_its_placeholder(
    replicas: tuple[Bot, Bot], aiml: FakeAimlApi, database: async_sessionmaker[AsyncSession]
) -> None:
    a, b = replicas
    aiml.enqueue(Reply(content="Answered elsewhere."))
    assert b.runtime.turns is not None and b.runtime.replicas is not None
    service = b.runtime.turns._service
    begin, stalled, wakes = service._begin, asyncio.Event(), asyncio.Event()

    async def stalls_before_storing(*args: Any) -> Any:
        stalled.set()
        await wakes.wait()
        return await begin(*args)  # its place is a's by now: HandedOff

    service._begin = stalls_before_storing  # type: ignore[method-assign,assignment]
    await b.send(mention("a question", ROOT))
    await asyncio.wait_for(stalled.wait(), 10)
    [placeholder] = a.replies("C1", ROOT)
    await kill(b.runtime, database)  # b's places expire as a stalled replica's would
    b.runtime.replicas.order._adopter = None
    async with database.begin() as session:
        await notify(session, repo.TURNS_HANDED_OFF, "")

    def answered() -> bool:
        return [(m.markdown.strip(), bool(m.context)) for m in a.replies("C1", ROOT)] == [
            ("Answered elsewhere.", True)
        ]

    await eventually(answered, timeout=20)
    wakes.set()  # b wakes up and finds its turn taken over
    await b.idle(timeout=30)
    await a.idle(timeout=30)

    [reply] = a.replies("C1", ROOT)
    assert reply.ts == placeholder.ts and answered()
    assert NOTE_TAKEN_OVER not in reply.context
    assert len(aiml.chat_requests) == 1


async def test_an_orphan_is_adopted_by_one_replica_and_a_place_whose_reply_was_stored_by_none(
    database: async_sessionmaker[AsyncSession],
) -> None:
    arrival = Arrival(
        "Ev1", ConversationKey("T1", "C1", ROOT), ConversationKind.CHANNEL, "U1", ROOT, "hi", addressed=True
    )
    record = to_record(arrival, new_thread=True)
    past = utcnow() - timedelta(seconds=1)
    async with database.begin() as session:
        conversation = await _thread(session)
        # Its reply was stored (the record cleared): recovery notes it, nobody runs it again.
        stored = TurnPlace(
            conversation_id=conversation.id, holder="dead", expires_at=past, arrival=None, started_at=past
        )
        # Started, but its replica died before storing the reply: nothing of it would remain.
        started = TurnPlace(
            conversation_id=conversation.id, holder="dead", expires_at=past, arrival=record, started_at=past
        )
        # Started by older code, which never cleared the record: it may have stored its reply.
        older = TurnPlace(
            conversation_id=conversation.id,
            holder="dead",
            expires_at=past,
            arrival={k: v for k, v in record.items() if k != repo.BEGINS_KEY},
            started_at=past,
        )
        waiting = TurnPlace(conversation_id=conversation.id, holder="dead", expires_at=past, arrival=record)
        session.add_all([stored, started, older, waiting])

    async with database.begin() as session:
        first = await repo.adopt_places(session, "me", LEASE, 10)
    async with database.begin() as session:
        second = await repo.adopt_places(session, "other", LEASE, 10)

    assert [p.id for p in first] == [started.id, waiting.id]
    assert second == []
    handoff = from_record(first[0].arrival)
    assert handoff is not None
    assert (handoff.arrival, handoff.new_thread) == (arrival, True)
    # The dead holder, were it alive after all, may not start the adopted turn.
    async with database.begin() as session:
        check = await repo.check_line(session, conversation.id, started.id, "dead", LEASE)
    assert check.lost and not check.started


async def test_a_dead_replicas_lone_waiting_turn_is_adopted_when_another_replica_looks_for_orphans(
    replicas: tuple[Bot, Bot], aiml: FakeAimlApi, database: async_sessionmaker[AsyncSession]
) -> None:
    a, b = replicas
    slow = " ".join(["slow"] * 8)
    aiml.enqueue(Reply(content=slow, chunk_size=5, chunk_interval=0.1), Reply(content="Second."))
    await a.send(mention("first question", ROOT))
    await eventually(lambda: len(aiml.chat_requests) == 1)
    await b.send(message("second", "1700000002.000000", thread_ts=ROOT))
    await until(lambda: _count_is(database, 2))
    await kill(b.runtime, database)
    # The look every replica takes every 10 s, asked for now (the signal a draining replica sends).
    async with database.begin() as session:
        await notify(session, repo.TURNS_HANDED_OFF, "")

    await eventually(lambda: len(aiml.chat_requests) == 2, timeout=10)
    await a.idle(timeout=30)
    await b.idle(timeout=30)

    assert len(aiml.chat_requests) == 2
    assert history(aiml, 1) == ["first question", slow, "second"]
    assert [m.markdown for m in a.replies("C1", ROOT)] == [slow, "Second."]
    assert not interrupted(a)


async def test_the_message_showing_a_turn_rides_in_its_record_until_the_reply_is_stored(
    database: async_sessionmaker[AsyncSession],
) -> None:
    arrival = Arrival(
        "Ev1", ConversationKey("T1", "C1", ROOT), ConversationKind.CHANNEL, "U1", ROOT, "hi", addressed=True
    )
    async with database.begin() as session:
        conversation = await _thread(session)
        place_id, _ = await repo.take_place(
            session, conversation.id, "me", LEASE, to_record(arrival, new_thread=True)
        )
    async with database.begin() as session:
        assert not await repo.note_placeholder(session, place_id, "someone else", "1700000009.000001")
        assert await repo.note_placeholder(session, place_id, "me", "1700000009.000002")
    async with database() as session:
        record = (await session.execute(select(TurnPlace.arrival).where(TurnPlace.id == place_id))).scalar()
    handoff = from_record(record)
    assert handoff is not None
    assert (handoff.arrival, handoff.new_thread, handoff.placeholder) == (arrival, True, "1700000009.000002")

    async with database.begin() as session:
        assert await repo.begin_reply(session, place_id, "me")
        # The stored reply carries the placeholder from here on.
        assert not await repo.note_placeholder(session, place_id, "me", "1700000009.000003")


async def _dead_turn_with_a_stored_reply(
    database: async_sessionmaker[AsyncSession], *, expired_ago: timedelta = timedelta(seconds=1)
) -> tuple[int, int]:
    """What a replica killed after storing its turn's reply and before its first Slack message
    leaves: its started place (record cleared), its lease run out `expired_ago`, and the reply
    `streaming`. Returns the conversation's id and the reply's."""
    past = utcnow() - expired_ago
    async with database.begin() as session:
        conversation = await _thread(session)
        question = Message(
            conversation_id=conversation.id,
            role=Role.USER,
            content="first question",
            user_id="U1",
            status=MessageStatus.COMPLETE,
            slack_ts=ROOT,
        )
        reply = Message(
            conversation_id=conversation.id,
            role=Role.ASSISTANT,
            content="",
            status=MessageStatus.STREAMING,
            lease_expires_at=past,
        )
        session.add_all([question, reply])
        session.add(
            TurnPlace(
                conversation_id=conversation.id,
                holder="dead",
                expires_at=past,
                arrival=None,
                started_at=past - timedelta(seconds=5),
            )
        )
        await session.flush()
        return conversation.id, reply.id


async def test_a_dead_replicas_place_holds_its_line_until_its_stored_reply_is_recovered(
    database: async_sessionmaker[AsyncSession],
) -> None:
    conversation_id, reply_id = await _dead_turn_with_a_stored_reply(database)
    async with database.begin() as session:
        place_id, first = await repo.take_place(session, conversation_id, "me", LEASE)
    async with database.begin() as session:
        waiting = await repo.check_line(session, conversation_id, place_id, "me", LEASE)
    async with database.begin() as session:
        await session.execute(
            update(Message).where(Message.id == reply_id).values(status=MessageStatus.INTERRUPTED)
        )
    async with database.begin() as session:
        recovered = await repo.check_line(session, conversation_id, place_id, "me", LEASE)

    assert not first
    assert (waiting.started, waiting.unrecovered, waiting.orphans, waiting.lost) == (False, 1, 0, False)
    assert recovered.started


@pytest.mark.parametrize(
    ("expired_ago", "held"),
    [(repo.RECOVERY_WAIT_SECONDS - 10, True), (repo.RECOVERY_WAIT_SECONDS + 5, False)],
)
async def test_a_recovery_that_never_comes_holds_the_line_for_a_bounded_time(
    database: async_sessionmaker[AsyncSession], expired_ago: int, held: bool
) -> None:
    conversation_id, _ = await _dead_turn_with_a_stored_reply(
        database, expired_ago=timedelta(seconds=expired_ago)
    )
    async with database.begin() as session:
        place_id, first = await repo.take_place(session, conversation_id, "me", LEASE)
        check = await repo.check_line(session, conversation_id, place_id, "me", LEASE)

    assert (first, check.started) == (not held, not held)


async def test_a_turn_after_a_dead_replicas_unrecovered_reply_is_answered_after_its_note(
    db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi, database: async_sessionmaker[AsyncSession]
) -> None:
    # The dead replica's turn had shown only its status: recovery posts the note as a message of its
    # own. The next turn waits for it, so the thread reads note, then answer; before, the answer came
    # first and the note under it seconds later.
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as a:
        await _dead_turn_with_a_stored_reply(database)
        aiml.enqueue(Reply(content="Second."))
        await a.send(mention("second", "1700000002.000000", thread_ts=ROOT))
        await eventually(lambda: len(a.replies("C1", ROOT)) == 2, timeout=15)
        await a.idle(timeout=30)

    note, answer = a.replies("C1", ROOT)
    assert NOTE_RESTARTED in note.context
    assert answer.markdown == "Second."
    assert len(aiml.chat_requests) == 1


async def test_a_turn_behind_an_unrecovered_reply_looks_again_once_a_second_and_at_once_when_signalled(
    db_url: str, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    conversation_id, reply_id = await _dead_turn_with_a_stored_reply(sessions)
    looks = _looks_at_lines(engine)
    async with _line(db_url, sessions) as (line, hub):
        await eventually(lambda: hub.connected)
        ticket = line.enter(conversation_id)
        async with sessions.begin() as session:
            await ticket.take(session, conversation_id)
        waiting = asyncio.create_task(ticket.wait())
        await asyncio.sleep(2.5)
        looks_while_held = len(looks)
        async with sessions.begin() as session:  # what recovery's claim commits, and its signal
            await session.execute(
                update(Message).where(Message.id == reply_id).values(status=MessageStatus.INTERRUPTED)
            )
            await notify(session, repo.TURN_ENDED, str(conversation_id))
        started = time.monotonic()
        await asyncio.wait_for(waiting, timeout=5)
        took = time.monotonic() - started
        ticket.leave()

    assert 2 <= looks_while_held <= 4  # once a second (a 50 ms poll would have looked some 50 times)
    assert took < 0.5


async def test_a_turn_first_in_its_line_starts_without_a_look_and_is_marked_started_by_its_reply(
    db_url: str, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions.begin() as session:
        conversation_id = (await _thread(session)).id
    looks = _looks_at_lines(engine)
    async with _line(db_url, sessions) as (line, _hub):
        first, second = line.enter(conversation_id), line.enter(conversation_id)
        for ticket in (first, second):
            async with sessions.begin() as session:
                await ticket.take(session, conversation_id, {"v": 1})
        await asyncio.wait_for(first.wait(), timeout=1)
        assert looks == []
        behind = asyncio.create_task(second.wait())
        await asyncio.sleep(0.3)
        assert not behind.done()  # the first runs: it holds the line
        assert looks

        async with sessions.begin() as session:
            await first.begin_reply(session)
        async with sessions() as session:
            place = await session.get_one(TurnPlace, first.place_id)
        assert place.started_at is not None and place.arrival is None  # recovery's, not adoptable
        first.leave()
        await asyncio.wait_for(behind, timeout=5)
        second.leave()


async def test_a_refused_turn_is_last_in_its_line_once_every_other_place_is_gone(
    db_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # What a refused turn asks before it forgets its thread (bot.conversation.admission.release).
    async with sessions.begin() as session:
        conversation_id = (await _thread(session)).id
    async with _line(db_url, sessions) as (line, _hub):
        first, second = line.enter(conversation_id), line.enter(conversation_id)
        for ticket in (first, second):
            async with sessions.begin() as session:
                await ticket.take(session, conversation_id, {"v": 1})
        async with sessions.begin() as session:
            assert not await first.last_in_line(session)  # the second is still in line
        assert await places(sessions) == 1  # the first's own place went in that transaction
        second.leave()
        await until(lambda: _count_is(sessions, 0))
        async with sessions.begin() as session:
            assert await first.last_in_line(session)
        first.leave()


async def test_a_refused_first_mention_leaves_the_thread_to_a_follow_up_admitted_meanwhile(
    db_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # Deleting the thread's row would take the follow-up's place with it (ON DELETE CASCADE): the
    # follow-up would be dropped as handed off, with nobody answering it.
    gate = Hesitant()
    key = ConversationKey("T1", "C1", ROOT)

    def said(ts: str, *, addressed: bool) -> Arrival:
        kind = ConversationKind.CHANNEL
        return Arrival(f"Ev{ts}", key, kind, "U1", ts, "question", addressed, mid_thread=ts != ROOT)

    async with _line(db_url, sessions) as (line, _hub):
        admission = Admission(sessions, line, thread_followups=True, stages=[gate])
        first = asyncio.create_task(admission.admit(said(ROOT, addressed=True), Nobody()))
        await asyncio.wait_for(gate.asked.wait(), timeout=5)
        follow_up = await admission.admit(said("1700000001.000200", addressed=False), Nobody())
        assert isinstance(follow_up, Admitted)
        gate.go.set()
        assert await first == Refused("closed")
        await until(lambda: _count_is(sessions, 1))  # the mention's place is gone, the follow-up's kept
        ticket = follow_up.ticket
        assert isinstance(ticket, SharedTicket)
        async with sessions() as session:
            assert await session.get(TurnPlace, ticket.place_id) is not None
            assert (await session.execute(select(func.count()).select_from(Conversation))).scalar_one() == 1
        follow_up.ticket.leave()


def _looks_at_lines(engine: AsyncEngine) -> list[str]:
    """The looks at a line (turn_places._CHECK) the engine sends from now on."""
    looks: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("WITH ahead AS"):
            looks.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    return looks


@asynccontextmanager
async def _line(
    db_url: str, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[tuple[SharedTurnOrder, SignalHub]]:
    """A replica's line of turns, with its LISTEN connection, closed afterwards."""
    hub = SignalHub(asyncpg_dsn(db_url))
    line = SharedTurnOrder(sessions, hub)
    hub.start()
    try:
        yield line, hub
    finally:
        await line.aclose()
        await hub.aclose()
