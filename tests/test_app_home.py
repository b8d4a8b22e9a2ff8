"""The App Home tab through the real endpoint: a person's own usage; for admins the workspace too."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.conversation.channel_settings import ChannelSettings
from bot.storage.models import UsageRecord
from bot.usage.home import Allowance, OpenAlert
from tests.fakes.aimlapi import FakeAimlApi
from tests.fakes.slack_api import FakeSlackApi, FakeUser
from tests.harness import Bot, make_settings, running_bot


@pytest.fixture
async def bot(db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi) -> AsyncIterator[Bot]:
    slack.users["U1"] = FakeUser(real_name="Pat Person")
    slack.users["UADMIN"] = FakeUser(real_name="Ada Admin", is_owner=True)
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as running:
        yield running


async def spend(bot: Bot, user: str, channel: str, credits: int) -> None:
    assert bot.runtime.core is not None
    async with bot.runtime.core.sessions() as session:
        session.add(
            UsageRecord(
                team_id="T1",
                channel_id=channel,
                user_id=user,
                model_requested="zhipu/glm-5",
                prompt_tokens=100,
                completion_tokens=20,
                credits_used=credits,
                status="complete",
                created_at=datetime.now(UTC),
            )
        )
        await session.commit()


async def open_home(bot: Bot, user: str, tab: str = "home") -> dict[str, Any] | None:
    await bot.send({"type": "app_home_opened", "user": user, "channel": "D1", "tab": tab, "event_ts": "1.1"})
    await bot.idle()
    return bot.slack.home_views.get(user)


def text_of(view: dict[str, Any]) -> str:
    return json.dumps(view["blocks"])


async def test_a_person_sees_their_own_usage_and_nothing_of_the_workspace(bot: Bot) -> None:
    await spend(bot, "U1", "C1", 12_345)
    await spend(bot, "U2", "C2", 99_999)

    view = await open_home(bot, "U1")

    assert view is not None and view["type"] == "home"
    shown = text_of(view)
    assert "12,345 credits" in shown
    assert "99,999" not in shown and "Workspace" not in shown


async def test_an_admin_also_sees_the_month_by_channel_and_by_person(bot: Bot) -> None:
    await spend(bot, "U1", "C1", 1_000)
    await spend(bot, "U2", "C2", 3_000)

    view = await open_home(bot, "UADMIN")

    assert view is not None
    shown = text_of(view)
    assert "Workspace (admins)" in shown
    assert "4,000 credits" in shown  # the month's total
    assert "<#C2>: 3,000 credits" in shown and "<@U1>: 1,000 credits" in shown
    assert shown.index("<#C2>") < shown.index("<#C1>")  # the biggest first


async def test_the_messages_tab_is_left_to_its_own_listener(bot: Bot) -> None:
    assert await open_home(bot, "U1", tab="messages") is None
    assert bot.slack.calls_to("views.publish") == []


class FixedAllowances:
    async def for_person(self, team_id: str, user_id: str) -> Sequence[Allowance]:
        return [
            Allowance(
                f"Daily quota of {user_id} in {team_id}", limit=50_000, used=38_000, resets="at midnight UTC"
            )
        ]

    async def for_workspace(self, team_id: str) -> Sequence[Allowance]:
        return [Allowance(f"Budget of {team_id} this month", limit=5_000_000, used=4_750_000)]


class OneAlert:
    async def open_alerts(self, team_id: str) -> Sequence[OpenAlert]:
        return [
            OpenAlert(
                f"{team_id} passed 95 % of its monthly budget", datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
            )
        ]


async def test_remaining_credits_and_open_alerts_appear_once_wired(bot: Bot) -> None:
    assert bot.runtime.home is not None
    bot.runtime.home.allowances = bot.runtime.home.alerts = None  # the runtime wires the quotas' own
    before = await open_home(bot, "UADMIN")
    bot.runtime.home.allowances, bot.runtime.home.alerts = FixedAllowances(), OneAlert()

    after = await open_home(bot, "UADMIN")

    assert before is not None and "Open alerts" not in text_of(before) and "Budget" not in text_of(before)
    assert after is not None
    shown = text_of(after)
    assert "12,000 of 50,000 credits left (76% used), resets at midnight UTC" in shown
    assert "250,000 of 5,000,000 credits left (95% used)" in shown
    assert "T1 passed 95 % of its monthly budget (2026-12-01 09:30 UTC)" in shown


async def test_changing_a_channels_settings_refreshes_the_admins_home(bot: Bot) -> None:
    assert bot.runtime.channel_settings is not None and bot.runtime.glm is not None
    first = await open_home(bot, "UADMIN")
    assert first is not None and "every channel uses the defaults" in text_of(first)
    await bot.command("/glm", "settings", user="UADMIN", channel="C7")
    await bot.idle()
    view = bot.slack.opened_views[-1]
    values = {
        b["block_id"]: {b["element"]["action_id"]: _initial(b["element"])}
        for b in view["blocks"]
        if b["type"] == "input"
    }
    values["max_output_tokens"]["max_output_tokens"]["value"] = "1000"
    payload = {
        "type": "view_submission",
        "team": {"id": "T1"},
        "user": {"id": "UADMIN", "team_id": "T1"},
        "api_app_id": "A1",
        "view": {**view, "state": {"values": values}},
    }

    await bot.interact(payload)
    await bot.idle()

    refreshed = bot.slack.home_views["UADMIN"]
    assert refreshed["id"] != first["id"]
    assert "<#C7>: mode threads, answers up to 1,000 tokens" in text_of(refreshed)
    assert await bot.runtime.channel_settings.for_channel("T1", "C7") == ChannelSettings(
        max_output_tokens=1000
    )


def _initial(element: dict[str, Any]) -> dict[str, Any]:
    kind = element["type"]
    if kind == "static_select":
        return {"type": kind, "selected_option": element.get("initial_option")}
    if kind == "checkboxes":
        return {"type": kind, "selected_options": element.get("initial_options") or []}
    return {"type": kind, "value": element.get("initial_value")}
