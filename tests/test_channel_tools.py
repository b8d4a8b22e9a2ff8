"""A channel's own tool list through the real endpoint: chosen in `/glm settings`, stored and audited,
and only those tools offered to the model in that channel."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.aimlapi import FakeAimlApi, Reply
from tests.fakes.response_url import ResponseUrl
from tests.fakes.slack_api import FakeSlackApi, FakeUser
from tests.harness import Bot, make_settings, mention, running_bot
from tests.test_glm_command import open_settings, stored, submission

BUILT_INS = ["current_time", "fetch_url", "slack_read_thread", "slack_read_channel"]


@pytest.fixture
async def response_url() -> AsyncIterator[ResponseUrl]:
    endpoint = ResponseUrl()
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


@pytest.fixture
async def bot(db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi) -> AsyncIterator[Bot]:
    slack.users["UADMIN"] = FakeUser(real_name="Ada Admin", is_admin=True)
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as running:
        yield running


def choosing_tools(view: dict[str, Any], user: str, names: list[str]) -> dict[str, Any]:
    """The submission of `view` with exactly `names` ticked in its tools input."""
    payload = submission(view, user)
    option = {name: {"text": {"type": "plain_text", "text": name}, "value": name} for name in names}
    payload["view"]["state"]["values"]["tools"] = {
        "tools": {"type": "checkboxes", "selected_options": [option[name] for name in names]}
    }
    return payload


def tools_input(view: dict[str, Any]) -> dict[str, Any]:
    (block,) = (b for b in view["blocks"] if b.get("block_id") == "tools")
    element: dict[str, Any] = block["element"]
    return element


def offered(aiml: FakeAimlApi) -> set[str]:
    return {tool["function"]["name"] for tool in aiml.chat_requests[-1].json.get("tools", [])}


async def test_a_channel_with_fetch_url_switched_off_does_not_offer_it_and_the_change_is_audited(
    bot: Bot, aiml: FakeAimlApi, response_url: ResponseUrl
) -> None:
    view = await open_settings(bot, "UADMIN", response_url)
    element = tools_input(view)
    assert element["type"] == "checkboxes"
    assert [o["value"] for o in element["options"]] == ["*", *BUILT_INS]
    assert [o["value"] for o in element["initial_options"]] == ["*"]  # nobody chose: all tools

    kept = ["current_time", "slack_read_thread", "slack_read_channel"]
    response = await bot.interact(choosing_tools(view, "UADMIN", kept))

    assert response.status_code == 200 and response.text == ""
    rows, audit = await stored(bot)
    assert [(r.channel_id, r.tools) for r in rows] == [("C1", sorted(kept))]
    assert [(a.actor_id, a.target_id) for a in audit] == [("UADMIN", "C1")]
    assert audit[0].before is not None and audit[0].before["tools"] is None
    assert audit[0].after is not None and audit[0].after["tools"] == sorted(kept)

    aiml.enqueue(Reply(content="here"), Reply(content="elsewhere"))
    await bot.send(mention("hello", "100.000001", channel="C1"))
    await bot.idle()
    assert offered(aiml) == set(kept)
    await bot.send(mention("hello", "100.000002", channel="C2"))
    await bot.idle()
    assert offered(aiml) == set(BUILT_INS)

    reopened = await open_settings(bot, "UADMIN", response_url)
    assert [o["value"] for o in tools_input(reopened)["initial_options"]] == kept  # in the offered order


async def test_ticking_all_tools_again_stores_no_list_so_tools_added_later_are_offered(
    bot: Bot, response_url: ResponseUrl
) -> None:
    view = await open_settings(bot, "UADMIN", response_url)
    await bot.interact(choosing_tools(view, "UADMIN", ["current_time"]))
    view = await open_settings(bot, "UADMIN", response_url)

    await bot.interact(choosing_tools(view, "UADMIN", ["*", "current_time"]))

    rows, audit = await stored(bot)
    assert [r.tools for r in rows] == [None]
    assert audit[-1].before is not None and audit[-1].before["tools"] == ["current_time"]
    assert audit[-1].after is not None and audit[-1].after["tools"] is None


async def test_an_unknown_tool_name_is_refused_in_the_modal_and_nothing_is_stored(
    bot: Bot, response_url: ResponseUrl
) -> None:
    view = await open_settings(bot, "UADMIN", response_url)

    response = await bot.interact(choosing_tools(view, "UADMIN", ["current_time", "shell__rm_rf"]))

    answer = json.loads(response.text)
    assert answer["response_action"] == "errors"
    assert answer["errors"] == {"tools": "Not a tool of this bot: shell__rm_rf."}
    assert await stored(bot) == ([], [])
