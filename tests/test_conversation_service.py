"""The conversation service against the fake AI/ML API and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.budget import TokenEstimator, prompt_budget
from bot.conversation.ordering import HandedOff
from bot.conversation.service import (
    NOTE_DATABASE,
    NOTE_INTERRUPTED,
    NOTE_ONLY_REASONING,
    NOTE_TOO_LONG,
    ConversationService,
    ServiceConfig,
    Turn,
)
from bot.llm.client import AimlClient
from bot.llm.types import ChatMessage
from bot.storage.conversations import ConversationKey, create_conversation
from bot.storage.db import create_engine, session_factory
from bot.storage.models import Conversation, ConversationKind, Message, MessageStatus, Role, UsageRecord
from tests.fakes.aimlapi import ErrorReply, FakeAimlApi, Reply
from tests.sinks import RecordingSink
from tests.thread_reads import thread_reads

KEY = ConversationKey("T1", "C1", "1700000000.000100")
SYSTEM = "You are a test assistant."


@pytest.fixture
async def llm(aiml: FakeAimlApi) -> AsyncIterator[AimlClient]:
    client = AimlClient(
        api_key="test-key", base_url=aiml.base_url, model="zhipu/glm-5", read_timeout=2, backoff_base=0.01
    )
    yield client
    await client.aclose()


def make_service(
    sessions: async_sessionmaker[AsyncSession], llm: AimlClient, *, window: int = 200_000, output: int = 1000
) -> ConversationService:
    return ConversationService(sessions, llm, ServiceConfig(SYSTEM, window, output))


def turn(text: str, key: ConversationKey = KEY) -> Turn:
    return Turn(key, ConversationKind.CHANNEL, text, "U1")


async def stored(sessions: async_sessionmaker[AsyncSession]) -> list[Message]:
    async with sessions() as session:
        return list((await session.execute(select(Message).order_by(Message.id))).scalars())


async def usage_rows(sessions: async_sessionmaker[AsyncSession]) -> list[UsageRecord]:
    async with sessions() as session:
        return list((await session.execute(select(UsageRecord).order_by(UsageRecord.id))).scalars())


async def test_a_turn_streams_the_answer_and_stores_messages_and_usage(sessions, llm, aiml):
    aiml.enqueue(Reply(content="Hello there, friend.", reasoning="Let me think.", credits_used=1234))
    sink = RecordingSink()

    outcome = await make_service(sessions, llm).reply(turn("Hi!"), sink)

    assert sink.text == "Hello there, friend."
    assert sink.events[0] == "thinking" and sink.events[-1] == "finish"
    assert sink.summary is not None and sink.summary.credits_used == 1234 and sink.summary.note is None
    assert outcome.status is MessageStatus.COMPLETE
    user, assistant = await stored(sessions)
    assert (user.role, user.content, user.user_id) == (Role.USER, "Hi!", "U1")
    assert (assistant.role, assistant.content, assistant.status) == (
        Role.ASSISTANT,
        "Hello there, friend.",
        MessageStatus.COMPLETE,
    )
    assert assistant.slack_ts == "1700000000.000001"
    [usage] = await usage_rows(sessions)
    assert usage.status == "complete" and usage.credits_used == 1234
    assert usage.model_requested == "zhipu/glm-5" and usage.model_returned == "glm-5"
    assert usage.prompt_tokens is not None and usage.completion_tokens is not None
    assert usage.conversation_id == outcome.conversation_id and usage.team_id == "T1"
    assert usage.client_request_id == aiml.requests[0].headers["X-Client-Request-Id"]
    assert usage.inference_id and usage.ttft_ms is not None and usage.duration_ms is not None


async def test_a_turn_marks_its_conversation_updated_once_at_its_replys_time(engine, sessions, llm, aiml):
    aiml.enqueue(Reply(content="Hello."))
    touches = 0

    def count_touches(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        nonlocal touches
        touches += statement.startswith("UPDATE conversations")

    event.listen(engine.sync_engine, "before_cursor_execute", count_touches)
    await make_service(sessions, llm).reply(turn("Hi!"), RecordingSink())

    assert touches == 1
    _, reply = await stored(sessions)
    async with sessions() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
    assert conversation.updated_at == reply.created_at


async def test_a_turn_whose_admission_opened_the_conversation_reads_nothing_back(engine, sessions, llm, aiml):
    # Admission inserted the thread's row for this turn: nothing can be in it yet, so the reply's
    # transaction neither looks the conversation up nor reads its history.
    async with sessions.begin() as session:
        opened = await create_conversation(session, KEY, ConversationKind.CHANNEL)
    aiml.enqueue(Reply(content="Hello."))
    with thread_reads(engine) as reads:
        await make_service(sessions, llm).reply(replace(turn("Hi!"), opened=opened), RecordingSink())

    assert reads == []
    question, reply = await stored(sessions)
    assert (question.conversation_id, reply.conversation_id) == (opened, opened)
    assert (reply.content, reply.status) == ("Hello.", MessageStatus.COMPLETE)
    assert aiml.requests[0].json["messages"][1:] == [{"role": "user", "content": "Hi!"}]


async def test_each_reply_sends_the_threads_history(sessions, llm, aiml):
    service = make_service(sessions, llm)
    aiml.enqueue(Reply(content="Paris."))
    aiml.enqueue(Reply(content="About 2.1 million."))
    await service.reply(turn("Capital of France?"), RecordingSink())
    await service.reply(turn("How many people live there?"), RecordingSink())

    sent = aiml.requests[1].json["messages"]
    assert sent == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "How many people live there?"},
    ]
    assert aiml.requests[1].json["stream"] is True
    assert aiml.requests[1].json["stream_options"] == {"include_usage": True}


async def test_an_answer_its_dead_replica_left_streaming_is_history_with_its_text_so_far(sessions, llm, aiml):
    # The next turn of the thread may start before recovery adds the note: the person saw this text.
    service = make_service(sessions, llm)
    aiml.enqueue(Reply(content="Paris is the capital"))
    aiml.enqueue(Reply(content="About 2.1 million."))
    await service.reply(turn("Capital of France?"), RecordingSink())
    async with sessions.begin() as session:
        answer = (await session.execute(select(Message).where(Message.role == Role.ASSISTANT))).scalar_one()
        answer.status = MessageStatus.STREAMING  # as a checkpoint left it when its replica was killed
    await service.reply(turn("How many people live there?"), RecordingSink())

    sent = aiml.requests[1].json["messages"]
    assert {"role": "assistant", "content": "Paris is the capital"} in sent


class PlaceholderWhileThinking(RecordingSink):
    """Auto mode without a status: the placeholder is posted while the model still thinks."""

    async def thinking(self) -> None:
        await super().thinking()
        self.refs_.append("1700000000.000009")


async def test_a_placeholder_posted_while_the_model_thinks_is_saved_before_any_text(sessions, llm, aiml):
    # A replica killed while the model thinks: recovery finds the placeholder and edits it, rather
    # than leave it saying "Thinking…" beside a note of its own.
    aiml.enqueue(Reply(content="Done.", reasoning="hmm " * 12, chunk_size=4, chunk_interval=0.1))
    sink = PlaceholderWhileThinking([])
    replying = asyncio.create_task(make_service(sessions, llm).reply(turn("Hi!"), sink))

    async def saved_ts() -> str | None:
        async with sessions() as session:
            row = (await session.execute(select(Message).where(Message.role == Role.ASSISTANT))).scalar()
            return None if row is None else row.slack_ts

    try:
        for _ in range(100):
            if await saved_ts() is not None:
                break
            await asyncio.sleep(0.02)
        assert not aiml.chat_requests[0].content_sent_at  # still thinking: no text yet
        assert await saved_ts() == "1700000000.000009"
    finally:
        await replying


async def test_other_threads_do_not_leak_into_the_history(sessions, llm, aiml):
    service = make_service(sessions, llm)
    aiml.enqueue(Reply(content="one"))
    aiml.enqueue(Reply(content="two"))
    await service.reply(turn("first thread"), RecordingSink())
    await service.reply(turn("second thread", key=ConversationKey("T1", "C1", "2.0")), RecordingSink())
    assert [m["content"] for m in aiml.requests[1].json["messages"]] == [SYSTEM, "second thread"]


async def test_reasoning_only_answer_ends_with_a_note(sessions, llm, aiml):
    aiml.enqueue(Reply(content="", reasoning="thinking hard " * 20, finish_reason="length"))
    sink = RecordingSink()
    outcome = await make_service(sessions, llm).reply(turn("Riddle?"), sink)
    assert sink.text == "" and sink.thought == 1
    assert sink.summary is not None and sink.summary.note == NOTE_ONLY_REASONING
    assert outcome.status is MessageStatus.COMPLETE


async def test_out_of_credits_fails_visibly_and_costs_nothing(sessions, llm, aiml):
    aiml.enqueue(ErrorReply(status=403, message="You've run out of credits. Please top up your balance"))
    sink = RecordingSink()
    outcome = await make_service(sessions, llm).reply(turn("Hi"), sink)
    assert sink.failure and "credits" in sink.failure.lower()
    assert outcome.status is MessageStatus.ERROR
    assert (await stored(sessions))[1].status is MessageStatus.ERROR
    [usage] = await usage_rows(sessions)
    assert usage.status == "credits" and usage.credits_used == 0 and usage.prompt_tokens is None
    assert len(aiml.requests) == 1


async def test_mid_stream_disconnect_keeps_the_partial_answer(sessions, llm, aiml):
    aiml.enqueue(Reply(content="one two three four five six", chunk_size=4, disconnect_after=2))
    sink = RecordingSink()
    outcome = await make_service(sessions, llm).reply(turn("Count"), sink)
    assert sink.text == "one two "
    assert sink.failure is not None
    assert outcome.status is MessageStatus.INTERRUPTED
    assert (await stored(sessions))[1].content == "one two "
    [usage] = await usage_rows(sessions)
    assert usage.status == "interrupted" and usage.credits_used is None and usage.prompt_tokens is None


async def test_history_is_trimmed_to_the_token_budget_oldest_first_keeping_system_and_newest(
    sessions, llm, aiml
):
    estimator = TokenEstimator()
    service = ConversationService(sessions, llm, ServiceConfig(SYSTEM, 2_000, 500), estimator=estimator)
    history: list[dict[str, str]] = []
    for i in range(8):
        question, answer = f"question {i} " + "y" * 300, f"answer {i} " + "x" * 300
        aiml.enqueue(Reply(content=answer))
        await service.reply(turn(question), RecordingSink())
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    aiml.enqueue(Reply(content="last", usage=False))  # no usage: the estimator stays as it was
    await service.reply(turn("newest question"), RecordingSink())

    sent = aiml.requests[-1].json["messages"]
    kept = sent[1:-1]
    budget = prompt_budget(2_000, 500)
    assert sent[0] == {"role": "system", "content": SYSTEM}
    assert sent[-1] == {"role": "user", "content": "newest question"}
    assert 0 < len(kept) < len(history)
    assert kept == history[len(history) - len(kept) :], "the newest turns, in order: the oldest went"
    assert estimator.estimate(_chat(sent)) <= budget
    # As much history as fits: the turn before the kept ones (its question and answer) would not.
    dropped_turn = history[len(history) - len(kept) - 2 : len(history) - len(kept)]
    assert estimator.estimate(_chat([sent[0], *dropped_turn, *sent[1:]])) > budget


def _chat(messages: list[dict[str, str]]) -> list[ChatMessage]:
    return [ChatMessage(m["role"], m["content"]) for m in messages]


async def test_a_message_larger_than_the_budget_gets_a_note_not_an_upstream_call(sessions, llm, aiml):
    sink = RecordingSink()
    outcome = await make_service(sessions, llm, window=2_000, output=500).reply(turn("z" * 50_000), sink)
    assert sink.failure == NOTE_TOO_LONG
    assert outcome.status is MessageStatus.ERROR
    assert aiml.requests == []


async def test_cancelling_a_turn_marks_it_interrupted(sessions, llm, aiml):
    aiml.enqueue(Reply(content="word " * 200, chunk_size=5, chunk_interval=0.02))
    sink = RecordingSink()
    task = asyncio.create_task(make_service(sessions, llm).reply(turn("Long story"), sink))
    while not sink.text:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.failure == NOTE_INTERRUPTED
    assistant = (await stored(sessions))[1]
    assert assistant.status is MessageStatus.INTERRUPTED and assistant.content == sink.text
    [usage] = await usage_rows(sessions)
    assert usage.status == "cancelled" and usage.credits_used is None


async def test_an_unreachable_database_gets_a_clear_note(llm, aiml):
    engine = create_engine("postgresql+asyncpg://bot:secret@127.0.0.1:1/nowhere")
    sink = RecordingSink()
    try:
        outcome = await make_service(session_factory(engine), llm).reply(turn("Hi"), sink)
    finally:
        await engine.dispose()
    assert sink.failure == NOTE_DATABASE
    assert outcome.status is MessageStatus.ERROR
    assert aiml.requests == []


class UndeliverableSink(RecordingSink):
    """Slack refused the final edit (e.g. channel_not_found after the placeholder landed)."""

    async def finish(self, summary):
        raise RuntimeError(f"final edit of {summary.model} rejected")


async def test_a_reply_that_cannot_be_delivered_still_stores_the_answer_and_its_cost(sessions, llm, aiml):
    aiml.enqueue(Reply(content="Billed answer.", credits_used=777))
    outcome = await make_service(sessions, llm).reply(turn("Hi"), UndeliverableSink())
    assert outcome.status is MessageStatus.ERROR
    assistant = (await stored(sessions))[1]
    assert (assistant.status, assistant.content) == (MessageStatus.ERROR, "Billed answer.")
    [usage] = await usage_rows(sessions)
    assert (usage.status, usage.credits_used) == ("complete", 777)


class _TakenOver:
    """A place another replica adopted while this one stalled: it may store nothing."""

    async def begin_reply(self, session: AsyncSession) -> None:  # noqa: ARG002
        raise HandedOff


async def test_a_turn_whose_place_was_taken_over_stores_nothing_and_calls_no_model(sessions, llm, aiml):
    from dataclasses import replace

    sink = RecordingSink()
    taken = replace(turn("Hi"), place=_TakenOver())  # type: ignore[arg-type]
    with pytest.raises(HandedOff):
        await make_service(sessions, llm).reply(taken, sink)

    assert sink.events == []  # the caller ends it: the adopter may answer in its placeholder
    assert await stored(sessions) == [] and await usage_rows(sessions) == []
    assert aiml.requests == []
