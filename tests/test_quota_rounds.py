"""A turn or a summary that calls the model more than once holds credits for each call: a person
near their limit is stopped before the call after the one that crossed it, never later."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.app import quota_gate
from bot.conversation.ledger import Ledger
from bot.conversation.quota import Quotas, Reservation
from bot.conversation.quota_gate import HeldCredits
from bot.conversation.summaries import Summarizer, SummaryRequest
from bot.llm.client import AimlClient
from bot.slack.glm_command import GlmRequest
from bot.slack.people import UserDirectory
from bot.slack.summaries import Summaries
from bot.storage.models import Message, MessageStatus, QuotaReservation, UsageRecord
from bot.usage.limits import DefaultLimits, Subject
from tests.fakes.aimlapi import Reply, ToolCallScript
from tests.harness import make_settings, mention, running_bot

LIMIT = 10_000
ROUND_COST = 2_000
MAX_OUTPUT = 200


def spent_before(credits: int) -> UsageRecord:
    """Earlier spend today, priced at 10 credits a token (the estimate's calibration reads it)."""
    return UsageRecord(
        team_id="T1",
        channel_id="C9",
        user_id="U1",
        model_requested="zhipu/glm-5",
        model_returned="glm-5",
        prompt_tokens=credits // 10 - 100,
        completion_tokens=100,
        credits_used=credits,
        status="complete",
        created_at=datetime.now(UTC),
    )


async def total_spent(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.sum(UsageRecord.credits_used))) or 0)


def tool_round(n: int) -> Reply:
    call = ToolCallScript("current_time", '{"tz": "UTC"}', id=f"call_{n}")
    return Reply(content=f"Checking {n}. ", tool_calls=[call], credits_used=ROUND_COST)


async def test_a_turn_needing_three_tool_rounds_stops_after_the_round_that_crosses_the_limit(
    db_url, fakes, sessions
):
    slack, aiml = fakes
    async with sessions.begin() as session:
        session.add(spent_before(7_000))  # 3,000 left: round 1 fits, round 2 crosses
    settings = make_settings(
        db_url, slack, aiml, quota_user_daily_credits=LIMIT, llm_max_output_tokens=MAX_OUTPUT
    )
    aiml.enqueue(tool_round(1), tool_round(2), tool_round(3), Reply(content="It is noon.", credits_used=1))
    async with running_bot(settings, slack, aiml) as bot:
        await bot.send(mention("what time is it, three times?", "100.000001"))
        await bot.idle()
        answer = bot.answer("C1", "100.000001")
        [reply] = [m for m in slack.thread("C1", "100.000001") if m.bot_id]

    assert len(aiml.chat_requests) == 2  # the third round was never asked for
    assert answer.startswith("Checking 1. Checking 2.")
    last_line = answer.strip().splitlines()[-1]
    assert "daily AI limit" in last_line and "10,000 credits" in last_line and "/glm quota" in last_line
    assert "It is noon" not in answer
    # Finished as a normal answer: the footer counts both rounds, the message is complete.
    assert "4,000 credits" in reply.context
    async with sessions() as session:
        [stored] = (await session.execute(select(Message).where(Message.role == "assistant"))).scalars()
        held = await session.scalar(select(func.count(QuotaReservation.id)))
    assert stored.status == MessageStatus.COMPLETE and stored.content == answer
    assert held == 0
    spent = await total_spent(sessions)
    assert spent == 7_000 + 2 * ROUND_COST  # each round's row once, no row for the call not made
    # Overshot by what the crossing round cost, below one call's estimate: at 10 credits a token
    # and a 1.2 margin, its 200 output tokens alone were held as 2,400 credits.
    assert 0 < spent - LIMIT <= MAX_OUTPUT * 12


async def test_the_same_turn_with_room_runs_all_its_rounds(db_url, fakes, sessions):
    slack, aiml = fakes
    async with sessions.begin() as session:
        session.add(spent_before(7_000))
    settings = make_settings(
        db_url, slack, aiml, quota_user_daily_credits=100_000, llm_max_output_tokens=MAX_OUTPUT
    )
    aiml.enqueue(tool_round(1), tool_round(2), tool_round(3), Reply(content="It is noon.", credits_used=1))
    async with running_bot(settings, slack, aiml) as bot:
        await bot.send(mention("what time is it, three times?", "100.000001"))
        await bot.idle()
        answer = bot.answer("C1", "100.000001")
    assert len(aiml.chat_requests) == 4 and answer.endswith("It is noon.")
    assert "limit" not in answer


def summaries_of(bot: Any, settings: Any) -> Summaries:
    runtime = bot.runtime
    assert runtime.reader is not None and runtime.core is not None
    summarizer = Summarizer(runtime.core.llm, runtime.core.ledger)
    people = UserDirectory(runtime.client)
    return Summaries(runtime.reader, summarizer, people, quota=quota_gate(settings, runtime.core))


async def test_a_summary_holds_credits_sized_by_its_transcript_while_it_runs(db_url, fakes, sessions):
    slack, aiml = fakes
    slack.stamp_from(time.time() - 3_600)
    for n in range(20):
        slack.add_message("C1", f"Message {n}: " + "the deploy went fine again " * 15, user="U1")
    settings = make_settings(
        db_url, slack, aiml, quota_user_daily_credits=10_000_000, llm_max_output_tokens=MAX_OUTPUT
    )
    aiml.enqueue(Reply(content="All fine.", credits_used=500, header_delay=0.5))
    async with running_bot(settings, slack, aiml) as bot:
        summaries = summaries_of(bot, settings)
        request = GlmRequest("T1", "C1", "U1", "", "1.2.3", is_admin=False, client=bot.runtime.client)
        running = asyncio.create_task(summaries.command(request))
        held: list[int] = []
        while not running.done():
            if aiml.chat_requests:  # the call is out: what is held now is the summary's
                async with sessions() as session:
                    held = list((await session.execute(select(QuotaReservation.credits))).scalars())
                break
            await asyncio.sleep(0.01)
        assert await running is None

    sent = sum(len(m["content"]) for m in aiml.chat_requests[0].json["messages"])
    # Admission alone held (new message 0 + history 0 + 200 output) x 10 = about 2,000 credits;
    # the transcript (four characters a token at least) and the summary's 1,500 tokens are held now.
    [hold] = held
    assert hold >= (sent // 4 + 1_500) * 10
    async with sessions() as session:
        assert await session.scalar(select(func.count(QuotaReservation.id))) == 0


async def test_a_summary_whose_limit_was_reached_after_admission_is_not_requested(aiml, sessions):
    quotas = Quotas(sessions, DefaultLimits(user_day=LIMIT), ZoneInfo("UTC"))
    subject = Subject("T1", "C1", "U1")
    async with sessions.begin() as session:
        session.add(spent_before(9_000))
    admitted = await quotas.reserve(subject, prompt_tokens=10, max_output_tokens=MAX_OUTPUT)
    assert isinstance(admitted, Reservation)  # 1,000 left when it was admitted
    async with sessions.begin() as session:
        session.add(spent_before(1_500))  # another turn of the person's settled meanwhile

    llm = AimlClient(api_key="k", base_url=aiml.base_url, model="zhipu/glm-5", read_timeout=5)
    try:
        summary = await Summarizer(llm, Ledger(sessions, None)).summarize(
            SummaryRequest("T1", "C1", "U1", "this thread", "Ada: hello"), HeldCredits(quotas, admitted)
        )
    finally:
        await llm.aclose()

    assert aiml.chat_requests == []
    assert not summary.ok and summary.outcome is None
    assert "daily AI limit" in summary.text and "/glm quota" in summary.text
    assert await total_spent(sessions) == 10_500
    async with sessions() as session:
        assert await session.scalar(select(func.count(QuotaReservation.id))) == 0
