"""The usage chart on admins' App Home, through the real endpoint: uploaded once a day per workspace
(shared nowhere), shown by file id to admins only; a failed draw, upload or view leaves the text."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from bot.slack.home_chart import HomeChart
from bot.storage.db import create_engine, session_factory
from bot.usage.chart import CHART_TITLE
from tests.fakes.aimlapi import FakeAimlApi
from tests.fakes.slack_api import FakeSlackApi, FakeUser
from tests.harness import Bot, make_settings, running_bot
from tests.test_app_home import open_home, spend
from tests.test_metrics import scrape

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
async def bot(db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi) -> AsyncIterator[Bot]:
    slack.users["U1"] = FakeUser(real_name="Pat Person")
    slack.users["UADMIN"] = FakeUser(real_name="Ada Admin", is_owner=True)
    slack.users["UADMIN2"] = FakeUser(real_name="Bea Admin", is_admin=True)
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as running:
        yield running


def images(view: dict[str, Any] | None) -> list[dict[str, Any]]:
    assert view is not None
    return [b for b in view["blocks"] if b["type"] == "image"]


def text_of(view: dict[str, Any] | None) -> str:
    assert view is not None
    return json.dumps(view["blocks"])


def uploads_asked(slack: FakeSlackApi) -> int:
    return len(slack.calls_to("files.getUploadURLExternal"))


async def chart_outcomes(bot: Bot) -> dict[str, float]:
    counted = await scrape(bot.http)
    return {
        dict(labels)["outcome"]: value
        for (name, labels), value in counted.items()
        if name == "slackbot_home_charts_total"
    }


def on_day(bot: Bot, day: date) -> HomeChart:
    """The running bot's chart, as if today were `day` in the digest's zone."""
    home = bot.runtime.home
    assert home is not None and home.chart is not None and bot.runtime.core is not None
    chart = HomeChart(bot.runtime.core.sessions, bot.runtime.settings.digest_zone, today=lambda: day)
    home.chart = chart
    return chart


async def test_an_admin_sees_the_chart_the_app_uploaded_and_shared_nowhere(bot: Bot) -> None:
    await spend(bot, "U1", "C1", 1_000)

    view = await open_home(bot, "UADMIN")

    [image] = images(view)
    [upload] = bot.slack.uploads.values()
    assert image["slack_file"] == {"id": upload.id}
    assert image["title"]["text"] == CHART_TITLE and image["alt_text"]
    assert upload.content is not None and upload.content.startswith(PNG_SIGNATURE)
    assert upload.channel is None and upload.thread_ts is None  # posted in no conversation
    assert "Workspace (admins)" in text_of(view)
    assert (await chart_outcomes(bot)).get("uploaded") == 1


async def test_a_person_who_is_not_an_admin_sees_no_chart_and_nothing_is_uploaded(bot: Bot) -> None:
    await spend(bot, "U1", "C1", 1_000)

    view = await open_home(bot, "U1")

    assert images(view) == [] and "1,000 credits" in text_of(view)
    assert uploads_asked(bot.slack) == 0


async def test_opening_the_home_again_the_same_day_reuses_the_upload_and_the_next_day_uploads_anew(
    bot: Bot,
) -> None:
    on_day(bot, date(2026, 12, 1))
    first = images(await open_home(bot, "UADMIN"))
    again = images(await open_home(bot, "UADMIN"))
    other_admin = images(await open_home(bot, "UADMIN2"))

    assert uploads_asked(bot.slack) == 1
    assert first == again == other_admin and len(first) == 1

    on_day(bot, date(2026, 12, 2))  # a new day, a new chart
    later = images(await open_home(bot, "UADMIN"))
    assert uploads_asked(bot.slack) == 2 and later[0]["slack_file"] != first[0]["slack_file"]


async def test_a_failed_upload_leaves_the_text_and_is_not_retried_on_every_open(bot: Bot) -> None:
    await spend(bot, "U1", "C1", 2_500)
    bot.slack.fail_next("files.getUploadURLExternal", error="ratelimited", status=429)

    view = await open_home(bot, "UADMIN")
    again = await open_home(bot, "UADMIN")

    assert images(view) == [] == images(again)
    assert "Workspace (admins)" in text_of(view) and "2,500 credits" in text_of(view)
    assert uploads_asked(bot.slack) == 1  # the second open did not try again at once
    assert (await chart_outcomes(bot)).get("upload_failed") == 1


async def test_a_chart_slack_will_not_show_yet_leaves_the_text_and_shows_on_the_next_open(bot: Bot) -> None:
    bot.slack.file_processing = 60.0  # Slack still processing the upload when the view comes

    view = await open_home(bot, "UADMIN")

    assert images(view) == [] and "Workspace (admins)" in text_of(view)
    assert (await chart_outcomes(bot)).get("refused") == 1
    bot.slack.file_processing = 0.0  # processed now
    [image] = images(await open_home(bot, "UADMIN"))
    [upload] = bot.slack.uploads.values()
    assert image["slack_file"] == {"id": upload.id} and uploads_asked(bot.slack) == 1


async def test_a_chart_that_cannot_be_drawn_leaves_the_text(bot: Bot, tmp_path: Path) -> None:
    await spend(bot, "U1", "C1", 3_000)
    home = bot.runtime.home
    assert home is not None
    unmigrated = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")  # no usage table
    try:
        home.chart = HomeChart(session_factory(unmigrated), bot.runtime.settings.digest_zone)
        view = await open_home(bot, "UADMIN")
    finally:
        await unmigrated.dispose()

    assert images(view) == [] and "3,000 credits" in text_of(view)
    assert uploads_asked(bot.slack) == 0
