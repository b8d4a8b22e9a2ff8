"""`/glm` through the real endpoint: the settings modal round trip, its checks, who may use it, the audit."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from bot.storage.models import AdminAudit, ChannelSettingsRow, UsageRecord
from tests.fakes.aimlapi import FakeAimlApi, Reply
from tests.fakes.response_url import ResponseUrl
from tests.fakes.slack_api import FakeSlackApi, FakeUser
from tests.harness import Bot, eventually, make_settings, mention, running_bot

BASE_PROMPT = "You are GLM-5, a helpful assistant"  # the start of bot/default_system_prompt.md
OTHER_MODEL = "openai/gpt-4o"


@pytest.fixture
async def response_url() -> AsyncIterator[ResponseUrl]:
    endpoint = ResponseUrl()
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


@pytest.fixture
async def bot(db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi) -> AsyncIterator[Bot]:
    slack.users["UADMIN"] = FakeUser(real_name="Ada Admin", is_admin=True)
    slack.users["UCREATOR"] = FakeUser(real_name="Cy Creator")
    slack.users["UOTHER"] = FakeUser(real_name="Otto Other")
    slack.channel_creators["C1"] = "UCREATOR"
    settings = make_settings(
        db_url, slack, aiml, allowed_models=("zhipu/glm-5", OTHER_MODEL), llm_max_output_tokens=4096
    )
    async with running_bot(settings, slack, aiml) as running:
        yield running


async def open_settings(
    bot: Bot, user: str, response_url: ResponseUrl, channel: str = "C1"
) -> dict[str, Any]:
    """Run `/glm settings` and return the modal Slack was asked to open."""
    opened = len(bot.slack.opened_views)
    response = await bot.command(
        "/glm", "settings", user=user, channel=channel, response_url=response_url.url
    )
    assert response.status_code == 200
    await eventually(lambda: len(bot.slack.opened_views) > opened)
    return bot.slack.opened_views[-1]


def submission(view: dict[str, Any], user: str, **changes: Any) -> dict[str, Any]:
    """The view_submission Slack sends for `view`: each input as the modal showed it, then `changes`
    (a select's value, a text, a number as text, or a checkbox as True/False)."""
    values: dict[str, Any] = {}
    for block in view["blocks"]:
        if block["type"] != "input":
            continue
        element, name = block["element"], block["block_id"]
        kind = element["type"]
        if kind == "static_select":
            option = element.get("initial_option")
            if name in changes:
                option = {"text": {"type": "plain_text", "text": changes[name]}, "value": changes[name]}
            state = {"type": kind, "selected_option": option}
        elif kind == "checkboxes":
            selected = element.get("initial_options") or []
            if name in changes:
                selected = element["options"] if changes[name] else []
            state = {"type": kind, "selected_options": selected}
        else:
            value = element.get("initial_value")
            state = {"type": kind, "value": changes.get(name, value)}
        values[name] = {element["action_id"]: state}
    return {
        "type": "view_submission",
        "team": {"id": "T1", "domain": "fake"},
        "user": {"id": user, "team_id": "T1"},
        "api_app_id": "A1",
        "token": "legacy",
        "trigger_id": "9.9.9",
        "view": {**view, "state": {"values": values}, "hash": "1"},
    }


async def stored(bot: Bot) -> tuple[list[ChannelSettingsRow], list[AdminAudit]]:
    assert bot.runtime.core is not None
    async with bot.runtime.core.sessions() as session:
        rows = list(await session.scalars(select(ChannelSettingsRow)))
        audit = list(await session.scalars(select(AdminAudit).order_by(AdminAudit.id)))
        return rows, audit


async def test_the_channel_creator_saves_settings_that_the_next_answer_in_that_channel_uses(
    bot: Bot, aiml: FakeAimlApi, response_url: ResponseUrl
) -> None:
    view = await open_settings(bot, "UCREATOR", response_url)
    assert bot.slack.calls_to("views.open")[-1].params["trigger_id"] == "1.2.3"

    response = await bot.interact(
        submission(
            view,
            "UCREATOR",
            system_prompt="Answer in French.",
            model=OTHER_MODEL,
            max_output_tokens="512",
        )
    )

    assert response.status_code == 200 and response.text == ""  # the modal closes
    rows, audit = await stored(bot)
    assert [(r.channel_id, r.system_prompt, r.model, r.max_output_tokens) for r in rows] == [
        ("C1", "Answer in French.", OTHER_MODEL, 512)
    ]
    assert [(a.actor_id, a.target_kind, a.target_id) for a in audit] == [("UCREATOR", "channel", "C1")]
    assert audit[0].before is not None and audit[0].before["model"] is None
    assert audit[0].after is not None and audit[0].after["system_prompt"] == "Answer in French."

    aiml.enqueue(Reply(content="Bonjour."))
    await bot.send(mention("hello", "100.000001", channel="C1"))
    await bot.idle()
    sent = aiml.chat_requests[-1].json
    assert sent["model"] == OTHER_MODEL
    assert sent["max_tokens"] == 512
    system = sent["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith(BASE_PROMPT) and system["content"].endswith("Answer in French.")
    assert bot.answer("C1", "100.000001") == "Bonjour."
    assert bot.runtime.core is not None
    async with bot.runtime.core.sessions() as session:
        assert list(await session.scalars(select(UsageRecord.model_requested))) == [OTHER_MODEL]


async def test_a_replacing_prompt_is_the_only_system_prompt_and_other_channels_keep_the_defaults(
    bot: Bot, aiml: FakeAimlApi, response_url: ResponseUrl
) -> None:
    view = await open_settings(bot, "UADMIN", response_url)
    await bot.interact(submission(view, "UADMIN", system_prompt="Only haiku.", replace_prompt=True))

    aiml.enqueue(Reply(content="ok"), Reply(content="ok"))
    await bot.send(mention("hello", "100.000001", channel="C1"))
    await bot.idle()
    await bot.send(mention("hello", "100.000002", channel="C2"))
    await bot.idle()

    here, elsewhere = (request.json for request in aiml.chat_requests)
    assert here["messages"][0] == {"role": "system", "content": "Only haiku."}
    assert elsewhere["messages"][0]["content"].startswith(BASE_PROMPT)
    assert "Only haiku." not in elsewhere["messages"][0]["content"]
    assert elsewhere["model"] == "zhipu/glm-5" and elsewhere["max_tokens"] == 4096


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"model": "evil/unlisted-model"}, "model", "Not an allowed model"),
        ({"system_prompt": "x" * 4_001}, "system_prompt", "At most 4,000 characters"),
        ({"max_output_tokens": "100000"}, "max_output_tokens", "Between 64 and 4,096"),
        ({"max_output_tokens": "lots"}, "max_output_tokens", "A whole number"),
        ({"replace_prompt": True, "system_prompt": ""}, "system_prompt", "replaces the bot's own"),
    ],
)
async def test_invalid_settings_are_shown_in_the_modal_and_not_stored(
    bot: Bot, response_url: ResponseUrl, changes: dict[str, Any], field: str, says: str
) -> None:
    view = await open_settings(bot, "UADMIN", response_url)

    response = await bot.interact(submission(view, "UADMIN", **changes))

    assert response.status_code == 200
    answer = json.loads(response.text)
    assert answer["response_action"] == "errors"
    assert says in answer["errors"][field]
    assert {b["block_id"] for b in view["blocks"] if b["type"] == "input"} >= set(answer["errors"])
    assert await stored(bot) == ([], [])


async def test_someone_neither_admin_nor_creator_is_told_who_may_change_settings(
    bot: Bot, response_url: ResponseUrl
) -> None:
    response = await bot.command("/glm", "settings", user="UOTHER", response_url=response_url.url)

    assert response.status_code == 200
    answer = await response_url.next_answer()
    assert answer["response_type"] == "ephemeral"
    assert "admins" in answer["text"] and "created the channel" in answer["text"]
    assert bot.slack.calls_to("views.open") == []


async def test_a_forged_submission_by_someone_else_is_refused(bot: Bot, response_url: ResponseUrl) -> None:
    view = await open_settings(bot, "UCREATOR", response_url)

    response = await bot.interact(submission(view, "UOTHER", model=OTHER_MODEL))

    assert json.loads(response.text)["response_action"] == "errors"
    assert await stored(bot) == ([], [])


async def test_settings_in_a_direct_message_explain_where_to_run_them(
    bot: Bot, response_url: ResponseUrl
) -> None:
    await bot.command("/glm", "settings", user="UADMIN", channel="D1", response_url=response_url.url)

    answer = await response_url.next_answer()
    assert "in the channel you want to change" in answer["text"]
    assert bot.slack.calls_to("views.open") == []


async def test_admins_see_the_latest_changes_and_others_do_not(bot: Bot, response_url: ResponseUrl) -> None:
    view = await open_settings(bot, "UCREATOR", response_url)
    await bot.interact(submission(view, "UCREATOR", model=OTHER_MODEL))

    await bot.command("/glm", "audit", user="UCREATOR", response_url=response_url.url)
    refused = await response_url.next_answer()
    await bot.command("/glm", "audit", user="UADMIN", response_url=response_url.url)
    await eventually(lambda: len(response_url.received) == 2)
    shown = response_url.received[-1]

    assert "Only the bot's admins" in refused["text"]
    assert shown["response_type"] == "ephemeral"
    assert "<@UCREATOR>" in shown["text"] and "<#C1>" in shown["text"]
    assert f"model default → `{OTHER_MODEL}`" in shown["text"]


async def test_help_lists_the_subcommands_and_an_unknown_word_gets_the_list(
    bot: Bot, response_url: ResponseUrl
) -> None:
    await bot.command("/glm", "", user="UOTHER", response_url=response_url.url)
    first = await response_url.next_answer()
    await bot.command("/glm", "frobnicate", user="UOTHER", response_url=response_url.url)
    await eventually(lambda: len(response_url.received) == 2)

    assert "/glm settings" in first["text"] and "/glm audit" in first["text"]
    assert "/glm summarize [#channel] [24h]" in first["text"]  # listed now that it exists
    assert "don't know `/glm frobnicate`" in response_url.received[-1]["text"]


async def test_an_expired_trigger_is_explained_instead_of_a_silent_failure(
    bot: Bot, response_url: ResponseUrl
) -> None:
    bot.slack.expired_triggers.add("1.2.3")

    await bot.command("/glm", "settings", user="UADMIN", response_url=response_url.url)

    answer = await response_url.next_answer()
    assert "did not let me open the settings form" in answer["text"]
