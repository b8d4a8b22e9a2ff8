"""A PostgreSQL outage while the bot runs: clear notes, nothing half-written, recovery on its own."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select

from bot.jobs.maintenance import Maintenance
from bot.storage.models import Message, MessageStatus, UsageRecord
from tests.fakes.aimlapi import Reply
from tests.harness import eventually, make_settings, mention, running_bot

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


async def test_health_reports_the_outage_and_the_recovery(db_url, proxy, fakes):
    slack, aiml = fakes
    async with running_bot(make_settings(proxy.url_for(db_url), slack, aiml), slack) as bot:
        assert (await bot.http.get("/healthz")).status_code == 200
        proxy.cut()
        down = await bot.http.get("/healthz")
        assert down.status_code == 503
        assert down.json() == {"status": "unavailable", "database": "unavailable"}
        proxy.restore()
        assert (await bot.http.get("/healthz")).status_code == 200


async def test_a_mention_during_an_outage_gets_a_note_and_the_next_one_an_answer(db_url, proxy, fakes):
    slack, aiml = fakes
    async with running_bot(make_settings(proxy.url_for(db_url), slack, aiml), slack) as bot:
        proxy.cut()
        await bot.send(mention("hello?", "100.000001"))
        await eventually(lambda: bool(bot.replies("C1", "100.000001")), 10)
        await bot.idle()
        [note] = bot.replies("C1", "100.000001")
        assert "database" in note.text.lower()
        assert aiml.requests == []

        proxy.restore()
        aiml.enqueue(Reply(content="Back again."))
        await bot.send(mention("and now?", "200.000001"))
        await bot.idle()
        assert bot.answer("C1", "200.000001") == "Back again."


async def test_an_outage_in_the_middle_of_a_reply_still_stores_it_once_the_database_returns(
    db_url, proxy, fakes, sessions
):
    slack, aiml = fakes
    aiml.enqueue(Reply(content="word " * 40, chunk_size=5, chunk_interval=0.05))
    async with running_bot(make_settings(proxy.url_for(db_url), slack, aiml), slack) as bot:
        await bot.send(mention("stream please", "300.000001"))
        await eventually(lambda: "word" in bot.answer("C1", "300.000001"), 10)
        proxy.cut()
        await eventually(lambda: bot.answer("C1", "300.000001") == "word " * 40, 15)
        await asyncio.sleep(1.0)
        proxy.restore()
        await bot.idle(timeout=30)

    async with sessions() as session:
        assistant = (await session.execute(select(Message).where(Message.role == "assistant"))).scalar_one()
        usage = (await session.execute(select(UsageRecord))).scalar_one()
    assert assistant.status is MessageStatus.COMPLETE and assistant.content == "word " * 40
    assert usage.status == "complete"


async def test_an_outage_longer_than_the_old_retry_bound_still_records_the_usage_row_once(
    db_url, proxy, fakes, sessions
):
    slack, aiml = fakes
    aiml.enqueue(Reply(content="word " * 40, chunk_size=5, chunk_interval=0.05, credits_used=2468))
    async with running_bot(make_settings(proxy.url_for(db_url), slack, aiml), slack) as bot:
        await bot.send(mention("stream please", "300.000001"))
        await eventually(lambda: "word" in bot.answer("C1", "300.000001"), 10)
        proxy.cut()
        await eventually(lambda: bot.answer("C1", "300.000001") == "word " * 40, 15)
        await bot.idle(timeout=30)
        # The outage outlasts the 15.5 s the bot used to retry for before giving the row up.
        await asyncio.sleep(17)
        proxy.restore()
        assert bot.runtime.core is not None
        ledger = bot.runtime.core.ledger
        await eventually(lambda: ledger.pending == 0, 30)
        await ledger.replay()  # a second replay of the same rows must not double them

    async with sessions() as session:
        assistant = (await session.execute(select(Message).where(Message.role == "assistant"))).scalar_one()
        rows = list((await session.execute(select(UsageRecord))).scalars())
    assert [(r.status, r.credits_used) for r in rows] == [("complete", 2468)]
    assert assistant.status is MessageStatus.COMPLETE and assistant.content == "word " * 40


async def test_a_maintenance_run_during_an_outage_is_counted_and_the_next_one_succeeds(db_url, proxy, fakes):
    slack, aiml = fakes
    async with running_bot(make_settings(proxy.url_for(db_url), slack, aiml), slack) as bot:
        metrics = bot.runtime.metrics
        assert bot.runtime.core is not None
        maintenance = Maintenance(
            bot.runtime.core.sessions, bot.runtime.client, model="m", single_process=False, metrics=metrics
        )
        proxy.cut()
        assert not await maintenance.run_once()
        proxy.restore()
        assert await maintenance.run_once()
        assert metrics.registry.get_sample_value("slackbot_maintenance_runs_failed_total") == 1
        last_success = metrics.registry.get_sample_value(
            "slackbot_maintenance_last_success_timestamp_seconds"
        )
        assert last_success is not None and last_success > time.time() - 60
