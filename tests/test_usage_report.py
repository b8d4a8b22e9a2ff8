"""The usage digest report and /usage numbers, computed by SQL on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.slack.digest_blocks import digest_message, personal_message
from bot.storage.models import UsageRecord
from bot.usage.personal import personal_usage
from bot.usage.report import (
    Change,
    DigestReport,
    build_report,
    day_bounds,
    format_change,
    format_usd,
)

LA = ZoneInfo("America/Los_Angeles")
SPRING_FORWARD = date(2026, 3, 8)  # 23 hours in Los Angeles
FALL_BACK = date(2026, 11, 1)  # 25 hours in Los Angeles


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def record(
    at: datetime,
    *,
    user: str | None = "U1",
    channel: str | None = "C1",
    model: str = "zhipu/glm-5",
    status: str = "complete",
    credits: int | None = 1_000,
    prompt: int | None = 100,
    completion: int | None = 50,
    cached: int | None = 10,
    reasoning: int | None = 20,
) -> UsageRecord:
    return UsageRecord(
        team_id="T1",
        channel_id=channel,
        user_id=user,
        model_requested=model,
        model_returned="glm-5",
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
        credits_used=credits,
        usd_spent=None if credits is None else credits / 2_000_000,
        status=status,
        created_at=at,
    )


async def add(sessions: async_sessionmaker[AsyncSession], *records: UsageRecord) -> None:
    async with sessions() as session:
        session.add_all(records)
        await session.commit()


async def report_for(
    sessions: async_sessionmaker[AsyncSession], day: date, tz: ZoneInfo = LA
) -> DigestReport:
    async with sessions() as session:
        return await build_report(session, day, tz)


def test_local_days_are_23_or_25_hours_long_on_dst_change_days() -> None:
    assert day_bounds(SPRING_FORWARD, LA) == (utc(2026, 3, 8, 8), utc(2026, 3, 9, 7))
    assert day_bounds(FALL_BACK, LA) == (utc(2026, 11, 1, 7), utc(2026, 11, 2, 8))
    assert day_bounds(date(2026, 6, 1), LA) == (utc(2026, 6, 1, 7), utc(2026, 6, 2, 7))


async def test_spring_forward_day_counts_exactly_its_23_local_hours(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await add(
        sessions,
        record(utc(2026, 3, 8, 7, 59, 59), user="UBEFORE"),  # 23:59:59 PST on 7 March
        record(utc(2026, 3, 8, 8, 0, 0), user="UFIRST"),  # midnight PST: first instant of 8 March
        record(utc(2026, 3, 9, 6, 59, 59), user="ULAST"),  # 23:59:59 PDT: last second of 8 March
        record(utc(2026, 3, 9, 7, 0, 0), user="UAFTER"),  # midnight PDT on 9 March
    )

    report = await report_for(sessions, SPRING_FORWARD)

    assert report.hours == 23
    assert report.totals.requests == 2
    assert {share.key for share in report.top_users} == {"UFIRST", "ULAST"}
    assert (await report_for(sessions, date(2026, 3, 7))).totals.requests == 1
    assert (await report_for(sessions, date(2026, 3, 9))).totals.requests == 1


async def test_fall_back_day_includes_its_extra_hour(sessions: async_sessionmaker[AsyncSession]) -> None:
    await add(
        sessions,
        record(utc(2026, 11, 1, 6, 59)),  # 23:59 PDT on 31 October
        record(utc(2026, 11, 1, 8, 30)),  # 01:30 PDT, the first 01:30
        record(utc(2026, 11, 1, 9, 30)),  # 01:30 PST, the repeated hour
        record(utc(2026, 11, 2, 7, 30)),  # 23:30 PST: would be 2 November in a 24-hour day
        record(utc(2026, 11, 2, 8, 0)),  # midnight PST on 2 November
    )

    report = await report_for(sessions, FALL_BACK)

    assert report.hours == 25
    assert report.totals.requests == 3
    assert "25 hours" in str(digest_message(report).blocks)


async def test_totals_split_success_failure_tokens_and_unknown_cost(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    noon = utc(2026, 6, 1, 19)
    await add(
        sessions,
        record(noon, credits=11_136, prompt=14, completion=1_334, cached=0, reasoning=1_000),
        record(noon, status="error", credits=None, prompt=None, completion=None, cached=None, reasoning=None),
        record(
            noon, status="interrupted", credits=None, prompt=500, completion=20, cached=None, reasoning=None
        ),
        record(noon, credits=2_000_000, prompt=1_000_000, completion=250_000, cached=400_000, reasoning=5),
    )

    totals = (await report_for(sessions, date(2026, 6, 1))).totals

    assert (totals.requests, totals.succeeded, totals.failed) == (4, 2, 2)
    assert totals.unknown_cost == 2
    assert totals.credits == 2_011_136
    assert totals.usd == 2_011_136 / 2_000_000
    tokens = totals.tokens
    assert (tokens.prompt, tokens.completion, tokens.cached, tokens.reasoning) == (
        1_000_514,
        251_354,
        400_000,
        1_005,
    )


async def test_top_lists_keep_the_five_biggest_spenders_and_every_model(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    noon = utc(2026, 6, 1, 19)
    rows = [
        record(noon, user=f"U{n}", channel=f"C{n}", credits=n * 1_000, model="zhipu/glm-5")
        for n in range(1, 8)
    ]
    rows += [
        record(noon, user="U7", channel="C7", credits=None, model="openai/gpt-4o"),
        record(noon, user=None, channel=None, credits=50_000, model="openai/gpt-4o"),
    ]
    await add(sessions, *rows)

    report = await report_for(sessions, date(2026, 6, 1))

    assert [s.key for s in report.top_users] == ["U7", "U6", "U5", "U4", "U3"]
    assert report.top_users[0].requests == 2
    assert report.top_users[0].credits == 7_000
    assert [s.key for s in report.top_channels] == ["C7", "C6", "C5", "C4", "C3"]
    assert [(s.key, s.requests, s.credits) for s in report.models] == [
        ("openai/gpt-4o", 2, 50_000),
        ("zhipu/glm-5", 7, 28_000),
    ]


async def test_change_against_the_day_before_and_the_seven_day_average(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    day = date(2026, 6, 10)
    await add(
        sessions,
        *(record(utc(2026, 6, 10, 19), credits=1_000) for _ in range(3)),  # the day: 3,000
        record(utc(2026, 6, 9, 19), credits=2_000),  # the day before
        record(utc(2026, 6, 7, 19), credits=5_000),  # inside the 7 days before
        record(utc(2026, 6, 2, 19), credits=99_000),  # 8 days before: outside the average
    )

    report = await report_for(sessions, day)

    assert report.credits_change == Change(vs_previous_day=0.5, vs_week_average=2.0)  # avg 7,000/7
    assert report.requests_change.vs_previous_day == 2.0
    assert report.requests_change.vs_week_average is not None
    assert round(report.requests_change.vs_week_average, 6) == 9.5  # 3 against 2/7
    text = str(digest_message(report).blocks)
    assert "vs day before +50%" in text
    assert "vs 7-day avg +200%" in text


async def test_change_is_not_available_without_earlier_usage(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await add(sessions, record(utc(2026, 6, 10, 19)))

    report = await report_for(sessions, date(2026, 6, 10))

    assert report.credits_change == Change(None, None)
    assert "vs day before n/a · vs 7-day avg n/a" in str(digest_message(report).blocks)


async def test_an_empty_day_says_there_was_no_usage(sessions: async_sessionmaker[AsyncSession]) -> None:
    await add(sessions, record(utc(2026, 3, 7, 20)))  # the day before has usage, the day has none

    report = await report_for(sessions, SPRING_FORWARD)
    message = digest_message(report)

    assert report.empty
    assert report.top_users == report.top_channels == report.models == ()
    assert message.text == "No usage on Sunday, 8 March 2026."
    assert any(block.get("text", {}).get("text") == message.text for block in message.blocks)


async def test_digest_message_formats_numbers_for_people(sessions: async_sessionmaker[AsyncSession]) -> None:
    noon = utc(2026, 6, 1, 19)
    await add(
        sessions,
        record(noon, user="UALICE", channel="CGENERAL", credits=1_234_567, prompt=12_345, completion=6_789),
        record(noon, user="UBOB", channel="D0DM", credits=None, status="error"),
    )
    report = await report_for(sessions, date(2026, 6, 1))

    message = digest_message(report, {"UALICE": "Alice <admin>"})
    text = str(message.blocks)

    assert message.blocks[0]["type"] == "header"
    assert "Monday, 1 June 2026" in message.blocks[0]["text"]["text"]
    assert "1,234,567 credits ($0.62)" in text
    assert "2 (1 succeeded · 1 failed)" in text
    assert "prompt 12,445 · completion 6,839" in text
    assert "1. Alice &lt;admin&gt; · 1 request · 1,234,567 credits ($0.62)" in text
    assert "2. UBOB · 1 request" in text  # no name known: the bare id, not a mention
    assert "<#CGENERAL>" in text
    assert "a direct message" in text
    assert "1 call (not in the credits above)" in text
    assert "`zhipu/glm-5`" in text
    assert message.text.startswith("Usage digest for Monday, 1 June 2026: 1,234,567 credits")


def test_small_amounts_keep_enough_decimals_to_be_non_zero() -> None:
    assert format_usd(11_136 / 2_000_000) == "$0.0056"
    assert format_usd(1 / 2_000_000) == "$0.00000050"
    assert format_usd(0.5) == "$0.50"
    assert format_usd(1234.5) == "$1,234.50"
    assert format_usd(0) == "$0.00"
    assert format_change(-0.125) == "-12%"
    assert format_change(0.034) == "+3.4%"
    assert format_change(None) == "n/a"


async def test_personal_usage_covers_today_last_seven_days_and_this_month_for_the_caller_only(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    now = utc(2026, 3, 10, 20)  # 13:00 PDT on Tuesday 10 March
    await add(
        sessions,
        record(utc(2026, 3, 10, 8), credits=1_000),  # 01:00 today
        record(utc(2026, 3, 10, 6, 59), credits=2_000),  # 23:59 yesterday
        record(utc(2026, 3, 4, 8), credits=4_000),  # 00:00 PST on 4 March: 7th day back
        record(utc(2026, 3, 4, 7, 59), credits=8_000),  # 3 March: this month, not the last 7 days
        record(utc(2026, 3, 1, 8), credits=None),  # 1 March, 00:00 PST: unknown cost
        record(utc(2026, 2, 28, 20), credits=32_000),  # February
        record(utc(2026, 3, 10, 8), user="UOTHER", credits=64_000),
    )

    async with sessions() as session:
        usage = await personal_usage(session, "U1", LA, now=now)

    today, week, month = usage.windows
    assert (today.requests, today.credits, today.tokens) == (1, 1_000, 150)
    assert (week.requests, week.credits, week.first_day) == (3, 7_000, date(2026, 3, 4))
    assert (month.requests, month.credits, month.unknown_cost) == (5, 15_000, 1)
    blocks = personal_message(usage).blocks
    fields = [field["text"] for block in blocks for field in block.get("fields", [])]
    assert fields[2] == (
        "*This month*\n5 requests\n750 tokens (500 in · 250 out)\n15,000 credits ($0.0075)\n"
        "_1 with unknown cost_"
    )
    assert "64,000" not in str(blocks)


async def test_personal_usage_of_a_newcomer_is_empty(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        usage = await personal_usage(session, "UNEW", LA, now=datetime.now(UTC) + timedelta(seconds=1))

    assert usage.empty
    assert "no recorded usage" in personal_message(usage).text
