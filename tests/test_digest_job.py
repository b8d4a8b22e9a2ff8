"""Posting the usage digest: once per (day, channel), failures explained and retried, on a schedule."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.cli.digest import digest_command
from bot.jobs.digest import DigestJob, DigestStatus, run_digest
from bot.jobs.scheduler import CATCH_UP_JOB_ID, JOB_ID, build_scheduler
from bot.llm.client import AimlClient
from bot.settings import Settings
from bot.storage import digest_runs
from bot.storage.db import create_engine, session_factory
from bot.storage.digest_runs import Claim
from bot.storage.models import DigestRun, UsageRecord
from tests.fakes.aimlapi import ErrorReply, FakeAimlApi
from tests.fakes.slack_api import FakeSlackApi

LA = ZoneInfo("America/Los_Angeles")
DAY = date(2026, 3, 8)
CHANNEL = "CDIGEST"
TOKEN = "xoxb-test"


@pytest.fixture
def client(slack: FakeSlackApi) -> AsyncWebClient:
    return AsyncWebClient(base_url=slack.api_url, token=TOKEN)


def job(sessions: async_sessionmaker[AsyncSession], client: AsyncWebClient, tz: ZoneInfo = LA) -> DigestJob:
    return DigestJob(sessions=sessions, client=client, channel=CHANNEL, tz=tz)


async def add_usage(sessions: async_sessionmaker[AsyncSession], at: datetime, credits: int = 4_000) -> None:
    async with sessions() as session:
        session.add(
            UsageRecord(
                team_id="T1",
                channel_id="C1",
                user_id="U1",
                model_requested="zhipu/glm-5",
                prompt_tokens=10,
                completion_tokens=20,
                credits_used=credits,
                status="complete",
                created_at=at,
            )
        )
        await session.commit()


async def recorded_runs(sessions: async_sessionmaker[AsyncSession]) -> list[DigestRun]:
    async with sessions() as session:
        return list(await session.scalars(select(DigestRun).order_by(DigestRun.day)))


def balance_client(aiml: FakeAimlApi) -> AimlClient:
    return AimlClient(api_key=aiml.api_key, base_url=aiml.base_url, model="zhipu/glm-5", max_retries=0)


async def run_until_posted(scheduler: AsyncIOScheduler, slack: FakeSlackApi) -> None:
    """Run the real scheduler until something is posted to the digest channel (5 s at most)."""
    scheduler.start()
    try:
        for _ in range(100):
            if slack.messages(CHANNEL):
                break
            await asyncio.sleep(0.05)
    finally:
        scheduler.shutdown(wait=False)
        await asyncio.sleep(0)


async def test_digest_is_posted_to_the_channel_and_recorded(
    sessions: async_sessionmaker[AsyncSession], client: AsyncWebClient, slack: FakeSlackApi
) -> None:
    await add_usage(sessions, datetime(2026, 3, 8, 20, tzinfo=UTC), credits=1_234_567)

    outcome = await run_digest(
        day=DAY, channel=CHANNEL, sessions=sessions, client=client, tz=LA, balance=None
    )

    assert outcome.status is DigestStatus.POSTED
    [message] = slack.messages(CHANNEL)
    assert message.ts == outcome.slack_ts
    assert "1,234,567 credits ($0.62)" in message.text
    assert message.blocks is not None
    assert message.blocks[0]["text"]["text"] == "Usage digest · Sunday, 8 March 2026"
    [run] = await recorded_runs(sessions)
    assert (run.day, run.channel_id, run.slack_ts) == (DAY, CHANNEL, message.ts)
    assert run.posted_at is not None


async def test_two_replicas_racing_for_the_same_day_post_once(
    db_url: str, sessions: async_sessionmaker[AsyncSession], slack: FakeSlackApi
) -> None:
    await add_usage(sessions, datetime(2026, 3, 8, 20, tzinfo=UTC))
    slack.latency = lambda _method: 0.3  # keep the winner's post in flight while the other replica tries
    engines = [create_engine(db_url), create_engine(db_url)]
    clients = [AsyncWebClient(base_url=slack.api_url, token=TOKEN) for _ in engines]
    try:
        outcomes = await asyncio.gather(
            *(
                run_digest(
                    day=DAY, channel=CHANNEL, sessions=session_factory(e), client=c, tz=LA, balance=None
                )
                for e, c in zip(engines, clients, strict=True)
            )
        )
        again = await run_digest(
            day=DAY, channel=CHANNEL, sessions=sessions, client=clients[0], tz=LA, balance=None
        )
    finally:
        for engine in engines:
            await engine.dispose()

    statuses = sorted(o.status for o in outcomes)
    # The loser either sees the winner's fresh claim or, on a slow machine, its finished post.
    assert statuses in (
        sorted([DigestStatus.POSTED, DigestStatus.IN_PROGRESS]),
        sorted([DigestStatus.POSTED, DigestStatus.ALREADY_POSTED]),
    )
    assert again.status is DigestStatus.ALREADY_POSTED
    assert len(slack.calls_to("chat.postMessage")) == 1
    assert len(slack.messages(CHANNEL)) == 1


async def test_a_claim_left_by_a_crashed_replica_is_taken_over_by_exactly_one_racer_once_stale(
    db_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    crashed_at = datetime.now(UTC) - digest_runs.STALE_AFTER - timedelta(minutes=1)
    async with sessions() as session:
        assert await digest_runs.claim(session, DAY, CHANNEL, now=crashed_at) is Claim.CLAIMED
        await session.commit()
    engines = [create_engine(db_url), create_engine(db_url)]

    async def take_over(engine: AsyncEngine) -> Claim:
        async with session_factory(engine)() as session:
            claim = await digest_runs.claim(session, DAY, CHANNEL)
            await session.commit()
            return claim

    try:
        claims = await asyncio.gather(*(take_over(e) for e in engines))
    finally:
        for engine in engines:
            await engine.dispose()

    assert sorted(claims) == sorted([Claim.CLAIMED, Claim.IN_PROGRESS])


async def test_a_failed_post_is_explained_not_counted_and_retried_by_the_next_run(
    sessions: async_sessionmaker[AsyncSession],
    client: AsyncWebClient,
    slack: FakeSlackApi,
    caplog: pytest.LogCaptureFixture,
) -> None:
    slack.fail_next("chat.postMessage", error="not_in_channel")
    digest = job(sessions, client)
    the_next_morning = datetime(2026, 3, 9, 17, tzinfo=UTC)  # 10:00 PDT on 9 March

    with caplog.at_level(logging.ERROR, logger="bot.jobs.digest"):
        [failed] = await digest.run_due(now=the_next_morning)

    assert failed.status is DigestStatus.FAILED
    assert failed.day == DAY
    assert failed.problem is not None
    assert "/invite" in failed.problem
    assert "/invite" in caplog.text
    assert "next run retries" in caplog.text
    assert slack.messages(CHANNEL) == []
    [run] = await recorded_runs(sessions)
    assert run.posted_at is None

    # The next day's run posts the failed day first, then its own day.
    outcomes = await digest.run_due(now=the_next_morning + timedelta(days=1))

    assert [(o.day, o.status) for o in outcomes] == [
        (DAY, DigestStatus.POSTED),
        (DAY + timedelta(days=1), DigestStatus.POSTED),
    ]
    assert [m.blocks[0]["text"]["text"] for m in slack.messages(CHANNEL) if m.blocks] == [
        "Usage digest · Sunday, 8 March 2026",
        "Usage digest · Monday, 9 March 2026",
    ]
    assert all(run.posted_at is not None for run in await recorded_runs(sessions))


@pytest.mark.parametrize(
    ("error", "status", "advice"),
    [
        ("channel_not_found", 200, "channel ID"),
        ("invalid_auth", 200, "SLACK_BOT_TOKEN"),
        ("missing_scope", 200, "chat:write"),
        ("ratelimited", 429, "wait 30s"),
    ],
)
async def test_slack_errors_come_with_the_fix_and_do_not_raise(
    sessions: async_sessionmaker[AsyncSession],
    client: AsyncWebClient,
    slack: FakeSlackApi,
    error: str,
    status: int,
    advice: str,
) -> None:
    slack.fail_next("chat.postMessage", error=error, status=status, retry_after=30 if status == 429 else None)

    failed = await run_digest(day=DAY, channel=CHANNEL, sessions=sessions, client=client, tz=LA, balance=None)
    retried = await run_digest(
        day=DAY, channel=CHANNEL, sessions=sessions, client=client, tz=LA, balance=None
    )

    assert failed.status is DigestStatus.FAILED
    assert failed.problem is not None
    assert failed.problem.startswith(error)
    assert advice in failed.problem
    assert retried.status is DigestStatus.POSTED


async def test_unreachable_slack_is_a_failed_run_not_a_crash(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    nowhere = AsyncWebClient(base_url="http://127.0.0.1:9/api/", token=TOKEN, timeout=2)

    outcome = await run_digest(
        day=DAY, channel=CHANNEL, sessions=sessions, client=nowhere, tz=LA, balance=None
    )

    assert outcome.status is DigestStatus.FAILED
    assert outcome.problem is not None
    assert "could not reach Slack" in outcome.problem


async def test_the_account_balance_is_shown_when_the_billing_api_answers(
    sessions: async_sessionmaker[AsyncSession], client: AsyncWebClient, slack: FakeSlackApi
) -> None:
    async with FakeAimlApi(balance=12.5) as aiml, balance_client(aiml) as balance:
        outcome = await run_digest(
            day=DAY, channel=CHANNEL, sessions=sessions, client=client, tz=LA, balance=balance
        )

    assert outcome.status is DigestStatus.POSTED
    assert [r.path for r in aiml.requests] == ["/v2/billing"]
    [message] = slack.messages(CHANNEL)
    assert "AI/ML API account balance: $12.50" in str(message.blocks)


async def test_a_failing_billing_api_still_posts_and_says_the_balance_is_unavailable(
    sessions: async_sessionmaker[AsyncSession], client: AsyncWebClient, slack: FakeSlackApi
) -> None:
    async with FakeAimlApi(balance=ErrorReply(503)) as aiml, balance_client(aiml) as balance:
        outcome = await run_digest(
            day=DAY, channel=CHANNEL, sessions=sessions, client=client, tz=LA, balance=balance
        )

    assert outcome.status is DigestStatus.POSTED
    [message] = slack.messages(CHANNEL)
    assert "No usage on Sunday, 8 March 2026." in message.text
    assert "AI/ML API account balance unavailable" in str(message.blocks)


async def test_a_dry_run_neither_posts_nor_takes_the_lock(
    sessions: async_sessionmaker[AsyncSession], client: AsyncWebClient, slack: FakeSlackApi
) -> None:
    await add_usage(sessions, datetime(2026, 3, 8, 20, tzinfo=UTC))

    outcome = await run_digest(
        day=DAY, channel=CHANNEL, sessions=sessions, client=client, tz=LA, balance=None, dry_run=True
    )

    assert outcome.status is DigestStatus.DRY_RUN
    assert outcome.report is not None
    assert outcome.report.totals.requests == 1
    assert slack.calls == []
    assert await recorded_runs(sessions) == []


async def test_start_up_makes_up_a_missed_digest_once_todays_run_time_has_passed(
    sessions: async_sessionmaker[AsyncSession], client: AsyncWebClient, slack: FakeSlackApi
) -> None:
    digest = job(sessions, client)
    before_nine = datetime(2026, 3, 9, 15, 59, tzinfo=UTC)  # 08:59 PDT
    after_nine = datetime(2026, 3, 9, 16, 1, tzinfo=UTC)  # 09:01 PDT

    assert await digest.catch_up(time(9, 0), now=before_nine) == []
    [made_up] = await digest.catch_up(time(9, 0), now=after_nine)
    [again] = await digest.catch_up(time(9, 0), now=after_nine + timedelta(hours=1))

    assert (made_up.day, made_up.status) == (DAY, DigestStatus.POSTED)
    assert again.status is DigestStatus.ALREADY_POSTED
    assert len(slack.messages(CHANNEL)) == 1


async def test_scheduler_posts_yesterdays_digest_at_the_configured_time(
    sessions: async_sessionmaker[AsyncSession], client: AsyncWebClient, slack: FakeSlackApi
) -> None:
    tz = ZoneInfo("Asia/Kolkata")
    run_at = (datetime.now(tz) + timedelta(seconds=2)).time().replace(microsecond=0)
    scheduler = build_scheduler(job(sessions, client, tz), run_at=run_at, tz=tz, catch_up=False)
    scheduled = scheduler.get_job(JOB_ID)
    assert scheduled is not None
    assert str(scheduled.trigger.timezone) == "Asia/Kolkata"

    await run_until_posted(scheduler, slack)

    [message] = slack.messages(CHANNEL)
    yesterday = datetime.now(tz).date() - timedelta(days=1)
    assert [run.day for run in await recorded_runs(sessions)] == [yesterday]
    assert message.text.startswith("No usage on")


async def test_scheduler_catches_up_as_soon_as_it_starts(
    sessions: async_sessionmaker[AsyncSession], client: AsyncWebClient, slack: FakeSlackApi
) -> None:
    scheduler = build_scheduler(job(sessions, client, ZoneInfo("UTC")), run_at=time(0, 0), tz=ZoneInfo("UTC"))
    assert scheduler.get_job(CATCH_UP_JOB_ID) is not None

    await run_until_posted(scheduler, slack)

    assert len(slack.messages(CHANNEL)) == 1
    assert [run.day for run in await recorded_runs(sessions)] == [
        datetime.now(UTC).date() - timedelta(days=1)
    ]


def settings(db_url: str, **overrides: str) -> Settings:
    # model_validate reads neither the environment nor a .env file: the test sees only these values.
    return Settings.model_validate(
        {"database_url": db_url, "usage_digest_tz": "America/Los_Angeles", **overrides}
    )


async def test_cli_dry_run_prints_a_table_without_slack(
    db_url: str, sessions: async_sessionmaker[AsyncSession], capsys: pytest.CaptureFixture[str]
) -> None:
    await add_usage(sessions, datetime(2026, 3, 8, 20, tzinfo=UTC), credits=1_234_567)

    code = await digest_command(settings(db_url), DAY, dry_run=True)

    out = capsys.readouterr().out
    assert code == 0
    assert "Usage digest · Sunday, 8 March 2026 (America/Los_Angeles, 23 h)" in out
    assert "1,234,567 credits ($0.62)" in out


async def test_cli_posting_needs_a_token_and_a_channel(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await digest_command(settings(db_url), DAY, dry_run=False) == 2
    assert "SLACK_BOT_TOKEN is required" in capsys.readouterr().err
    assert await digest_command(settings(db_url, slack_bot_token=TOKEN), DAY, dry_run=False) == 2
    assert "USAGE_DIGEST_CHANNEL is required" in capsys.readouterr().err


async def test_cli_posts_once_per_day(
    db_url: str, slack: FakeSlackApi, capsys: pytest.CaptureFixture[str]
) -> None:
    configured = settings(
        db_url, slack_bot_token=TOKEN, usage_digest_channel=CHANNEL, slack_api_url=slack.api_url
    )

    first = await digest_command(configured, DAY, dry_run=False)
    second = await digest_command(configured, DAY, dry_run=False)

    out = capsys.readouterr().out
    assert (first, second) == (0, 0)
    assert "posted the digest for 2026-03-08" in out
    assert "already posted" in out
    assert len(slack.messages(CHANNEL)) == 1
