"""Budget alerts: each threshold once per entity and period, across restarts and two processes; spikes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import func, select

from bot.conversation.quota import Quotas
from bot.jobs.alerts import AlertJob
from bot.storage.db import create_engine, session_factory
from bot.storage.models import QuotaAlert
from bot.usage.limits import DefaultLimits, Subject
from tests.fakes.aimlapi import Reply
from tests.fakes.response_url import ResponseUrl
from tests.harness import make_settings, mention, running_bot
from tests.test_quotas import ledger_row

ALERTS = "CALERTS"
U1 = Subject("T1", "C1", "U1")


def alert_job(sessions, slack, *, spike_minimum: int = 10**12, **limits: int) -> AlertJob:
    stage = Quotas(sessions, DefaultLimits(**limits), ZoneInfo("UTC"))
    client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url)
    return AlertJob(sessions, client, ALERTS, stage, spike_minimum=spike_minimum)


async def spend(sessions, credits: int, **where: object) -> None:
    async with sessions.begin() as session:
        session.add(ledger_row(credits, **where))  # type: ignore[arg-type]


def posted(slack) -> list[str]:
    return [m.text for m in slack.messages(ALERTS)]


async def test_each_threshold_is_posted_once_as_it_is_crossed(sessions, slack):
    job = alert_job(sessions, slack, user_day=10_000)
    await spend(sessions, 8_000)
    await job.check(U1)
    await job.check(U1)
    await spend(sessions, 1_600)  # 96 %
    await job.check(U1)
    await spend(sessions, 500)  # 101 %
    await job.check(U1)
    await job.check(U1)

    texts = posted(slack)
    assert len(texts) == 3
    assert "80% used" in texts[0] and "95% used" in texts[1] and "used up" in texts[2]
    assert "8,000 of 10,000 credits" in texts[0]


async def test_settled_calls_of_one_subject_share_a_check_and_none_is_missed(sessions, slack):
    stage = Quotas(sessions, DefaultLimits(user_day=10_000), ZoneInfo("UTC"))
    client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url)
    # 2 s between checks: the five writes below fit in it on a loaded machine (0.3 s did not, with 6
    # test workers on 2 cores and PostgreSQL).
    job = AlertJob(sessions, client, ALERTS, stage, spike_minimum=10**12, check_every=2.0)
    checks: list[Subject] = []
    check = job.check

    async def counted(subject: Subject, now: datetime | None = None) -> int:
        checks.append(subject)
        return await check(subject, now)

    job.check = counted  # type: ignore[method-assign]
    await spend(sessions, 1_000)
    job.check_soon(U1)  # checked at once
    await asyncio.sleep(0.1)
    for _ in range(5):  # settled while the last check is recent: one check for all of them
        await spend(sessions, 1_600)
        job.check_soon(U1)
    job.check_soon(Subject("T1", "C2", "U2"))  # another subject is not held back
    await asyncio.sleep(0.1)
    assert len(checks) == 2 and not posted(slack)
    for _ in range(300):  # the deferred check, 2 s after the first, reads all five rows: 9,000 of 10,000
        if len(checks) == 3 and posted(slack):
            break
        await asyncio.sleep(0.02)
    assert len(checks) == 3
    assert ["80% used" in text for text in posted(slack)] == [True]

    await spend(sessions, 1_000)
    job.check_soon(U1)
    await job.idle()  # shutdown and tests do not wait out the pause
    assert len(checks) == 4 and "used up" in posted(slack)[-1]


async def test_a_jump_past_several_thresholds_is_one_message_and_they_are_not_sent_later(sessions, slack):
    job = alert_job(sessions, slack, workspace_month=10_000)
    await spend(sessions, 12_000)
    await job.check(Subject("T1", None, None))
    await job.check(Subject("T1", "C2", "U2"))
    [text] = posted(slack)
    assert "The workspace's monthly budget is used up" in text
    async with sessions() as session:
        rows = await session.scalar(
            select(func.count(QuotaAlert.id)).where(QuotaAlert.posted_at.is_not(None))
        )
    assert rows == 3  # 80, 95 and 100 are all on record


async def test_alerts_are_not_repeated_after_a_restart(db_url, sessions, slack):
    await spend(sessions, 9_000)
    first = alert_job(sessions, slack, user_day=10_000)
    assert await first.check(U1) == 1
    # A new process on the same database: a fresh engine, a fresh job.
    engine = create_engine(db_url)
    try:
        again = alert_job(session_factory(engine), slack, user_day=10_000)
        assert await again.sweep() == 0
        assert await again.check(U1) == 0
    finally:
        await engine.dispose()
    assert len(posted(slack)) == 1


async def test_two_processes_checking_at_once_post_each_alert_once(db_url, sessions, slack):
    await spend(sessions, 9_600)
    engine = create_engine(db_url)
    try:
        jobs = [
            alert_job(sessions, slack, user_day=10_000),
            alert_job(session_factory(engine), slack, user_day=10_000),
        ]
        results = await asyncio.gather(*(jobs[n % 2].check(U1) for n in range(10)))
    finally:
        await engine.dispose()
    assert sum(results) == 1
    [text] = posted(slack)
    assert "95% used" in text


async def test_a_failed_post_is_retried_by_the_sweep_once_its_claim_is_stale(sessions, slack):
    job = alert_job(sessions, slack, user_day=10_000)
    await spend(sessions, 8_500)
    slack.fail_next("chat.postMessage", error="channel_not_found")
    assert await job.check(U1) == 0
    assert posted(slack) == []
    assert await job.sweep() == 0  # the claim is fresh: maybe another process is posting

    later = datetime.now(UTC) + timedelta(minutes=6)
    assert await job.sweep(later) == 1
    assert await job.sweep(later) == 0
    assert len(posted(slack)) == 1


async def test_a_spike_is_alerted_once_when_today_exceeds_three_times_the_weekly_average(sessions, slack):
    job = alert_job(sessions, slack, spike_minimum=5_000)
    now = datetime.now(UTC)
    for days_ago in range(1, 8):
        await spend(sessions, 1_000, when=now - timedelta(days=days_ago))
    await spend(sessions, 2_900)
    assert await job.check(U1) == 0  # under the minimum and under 3x
    await spend(sessions, 2_200)  # 5,100 today: over 3x 1,000 and over the minimum
    assert await job.check(U1) == 1
    await spend(sessions, 10_000)
    assert await job.check(U1) == 0
    [text] = posted(slack)
    assert "Spending spike" in text and "5,100" in text and "5.1×" in text


async def test_a_spike_under_the_minimum_is_not_alerted(sessions, slack):
    job = alert_job(sessions, slack, spike_minimum=100_000)
    await spend(sessions, 50_000)  # no history at all: infinitely above average, but small
    assert await job.check(U1) == 0


async def test_a_reply_that_crosses_a_threshold_alerts_the_admin_channel(db_url, fakes):
    slack, aiml = fakes
    settings = make_settings(db_url, slack, aiml, quota_user_daily_credits=10_000, admin_alert_channel=ALERTS)
    async with running_bot(settings, slack, aiml) as bot:
        aiml.enqueue(Reply(content="Sure.", credits_used=8_100))
        await bot.send(mention("hello", "100.000001"))
        await bot.idle()
        assert bot.runtime.alerts is not None
        await bot.runtime.alerts.idle()
    [text] = posted(slack)
    assert "80% used" in text and "8,100 of 10,000" in text


async def test_usage_shows_the_callers_remaining_daily_and_monthly_credits(db_url, fakes):
    slack, aiml = fakes
    receiver = ResponseUrl()
    await receiver.start()
    settings = make_settings(
        db_url, slack, aiml, quota_user_daily_credits=50_000, quota_user_monthly_credits=1_000_000
    )
    try:
        async with running_bot(settings, slack, aiml) as bot:
            aiml.enqueue(Reply(content="Counted.", credits_used=4_321))
            await bot.send(mention("count this", "100.000001"))
            await bot.idle()
            await bot.command("/usage", response_url=receiver.url)
            answer = await receiver.next_answer()
    finally:
        await receiver.stop()
    shown = str(answer["blocks"]) + answer["text"]
    assert "Today: 45,679 of 50,000 credits left" in shown
    assert "This month: 995,679 of 1,000,000 credits left" in shown


QUOTA_TABLES = {"quota_overrides", "quota_reservations", "quota_alerts"}


async def test_the_quota_migration_goes_down_and_up_again(empty_db_url):
    from alembic import command

    from bot.storage.migrate import current_revision, run_alembic, upgrade_head
    from tests.test_migrations import table_names

    await upgrade_head(empty_db_url)
    assert await table_names(empty_db_url) >= QUOTA_TABLES

    # Down to the revision before the quotas' (the chain is redrawn as branches merge).
    await run_alembic(empty_db_url, lambda config: command.downgrade(config, "0005_refusal_notices"))
    assert await current_revision(empty_db_url) == "0005_refusal_notices"
    assert not QUOTA_TABLES & await table_names(empty_db_url)

    await upgrade_head(empty_db_url)
    assert await table_names(empty_db_url) >= QUOTA_TABLES


async def test_the_app_home_shows_remaining_credits_the_budget_and_open_alerts(db_url, fakes, sessions):
    from tests.test_app_home import open_home, text_of

    slack, aiml = fakes
    settings = make_settings(
        db_url,
        slack,
        aiml,
        quota_user_daily_credits=10_000,
        budget_workspace_monthly_credits=1_000_000,
        admin_alert_channel=ALERTS,
        admin_user_ids="UADMIN",
    )
    await spend(sessions, 8_500, user="UADMIN")
    async with running_bot(settings, slack, aiml) as bot:
        assert bot.runtime.alerts is not None
        await bot.runtime.alerts.check(Subject("T1", "C1", "UADMIN"))
        view = await open_home(bot, "UADMIN")
    assert view is not None
    shown = text_of(view)
    assert "Your daily quota" in shown and "1,500 of 10,000" in shown
    assert "Workspace budget this month" in shown and "991,500 of 1,000,000" in shown
    assert "80% used" in shown  # the alert posted a moment ago is open
