"""The digest's budget section and its chart: uploaded into the digest's thread, never in its way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from slack_sdk.web.async_client import AsyncWebClient

from bot.jobs.digest import DigestStatus, run_digest
from bot.usage.chart import CHART_TITLE, chart_data, chart_png, render_png
from bot.usage.limits import DefaultLimits
from tests.fakes.slack_api import FakeUser
from tests.test_quotas import ledger_row

UTC_ZONE = ZoneInfo("UTC")
CHANNEL = "CDIGEST"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def yesterday_spend(sessions, credits: int, **where: object) -> None:
    noon = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)
    async with sessions.begin() as session:
        session.add(ledger_row(credits, when=noon, **where))  # type: ignore[arg-type]


async def digest(sessions, slack, limits: DefaultLimits):
    client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url)
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    return await run_digest(
        day=yesterday,
        channel=CHANNEL,
        sessions=sessions,
        client=client,
        tz=UTC_ZONE,
        balance=None,
        limits=limits,
    )


async def test_the_digest_shows_each_budgets_use_and_who_is_over_80_percent(sessions, slack):
    slack.users["U1"] = FakeUser(real_name="Ada Lovelace")
    await yesterday_spend(sessions, 45_000, user="U1")
    await yesterday_spend(sessions, 10_000, user="U2", channel="C2")
    limits = DefaultLimits(user_day=50_000, workspace_month=1_000_000)

    outcome = await digest(sessions, slack, limits)

    assert outcome.status is DigestStatus.POSTED
    [message] = slack.messages(CHANNEL)
    shown = str(message.blocks)
    assert "Workspace monthly budget" in shown
    # Month to date: at least yesterday's 55,000 (earlier days of the month have none here).
    assert "55,000 of 1,000,000 credits" in shown or (datetime.now(UTC).day == 1)
    assert "Ada Lovelace's daily limit: 45,000 of 50,000 credits (90%)" in shown
    assert "U2" not in shown.split("Over 80")[-1]  # 20 % is not listed
    assert "<@" not in shown  # nobody is pinged


async def test_the_chart_is_uploaded_as_a_png_into_the_digests_thread(sessions, slack):
    await yesterday_spend(sessions, 45_000)
    outcome = await digest(sessions, slack, DefaultLimits(workspace_month=3_000_000))

    [file] = slack.uploads.values()
    assert file.channel == CHANNEL and file.thread_ts == outcome.slack_ts
    assert file.content is not None and file.content.startswith(PNG_MAGIC)
    assert file.title == CHART_TITLE and file.alt_txt
    assert [c.method for c in slack.calls if c.method.startswith("files.")] == [
        "files.getUploadURLExternal",
        "files.completeUploadExternal",
    ]


async def test_a_failed_chart_upload_leaves_the_digest_text_posted(sessions, slack):
    await yesterday_spend(sessions, 45_000)
    slack.fail_next("files.completeUploadExternal", error="not_in_channel")

    outcome = await digest(sessions, slack, DefaultLimits())

    assert outcome.status is DigestStatus.POSTED
    [message] = slack.messages(CHANNEL)
    assert "45,000" in str(message.blocks)
    assert all(f.channel is None for f in slack.uploads.values())  # nothing was shared


async def test_an_unreachable_upload_url_leaves_the_digest_text_posted(sessions, slack):
    await yesterday_spend(sessions, 45_000)
    slack.fail_next("files.getUploadURLExternal", status=500, error="internal_error")

    outcome = await digest(sessions, slack, DefaultLimits())

    assert outcome.status is DigestStatus.POSTED and len(slack.messages(CHANNEL)) == 1
    assert slack.uploads == {}


async def test_the_chart_stacks_the_top_channels_per_day_with_the_budgets_daily_pace(sessions):
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        for n, channel in enumerate(["C1", "C2", "C3", "C4", "C5", "C6", "C7"]):
            session.add(ledger_row(1_000 * (n + 1), channel=channel, when=now - timedelta(days=1)))
        session.add(ledger_row(500, channel="C1", when=now - timedelta(days=20)))  # outside the 14 days
    async with sessions() as session:
        data = await chart_data(session, now.date(), UTC_ZONE, monthly_budget=3_100_000)

    assert len(data.days) == 14 and data.days[-1] == now.date()
    keys = [key for key, _ in data.series]
    assert keys == ["C7", "C6", "C5", "C4", "C3", "other"]
    assert dict(data.series)["other"][-2] == 3_000  # C1 + C2 yesterday
    assert sum(sum(values) for _, values in data.series) == 28_000
    assert data.daily_pace is not None and 100_000 - 3_500 <= data.daily_pace <= 111_000 + 1


async def test_the_app_home_chart_is_a_png_even_with_no_usage(sessions):
    png = await chart_png(sessions, datetime.now(UTC).date(), UTC_ZONE, monthly_budget=1_000_000)
    assert png.startswith(PNG_MAGIC)
    assert render_png(
        (await _empty(sessions)),
    ).startswith(PNG_MAGIC)


async def _empty(sessions):
    async with sessions() as session:
        return await chart_data(session, datetime.now(UTC).date(), UTC_ZONE)
