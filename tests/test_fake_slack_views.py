"""The fake Slack refuses the views and arguments Slack refuses, so modals and the Home tab are checked."""

from __future__ import annotations

from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.slack_api import FakeSlackApi

MODAL: dict[str, Any] = {
    "type": "modal",
    "title": {"type": "plain_text", "text": "Settings"},
    "submit": {"type": "plain_text", "text": "Save"},
    "blocks": [
        {
            "type": "input",
            "block_id": "b",
            "label": {"type": "plain_text", "text": "Prompt"},
            "element": {"type": "plain_text_input", "action_id": "a"},
        }
    ],
}
HOME: dict[str, Any] = {
    "type": "home",
    "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "Hi"}}],
}


def client(slack: FakeSlackApi) -> AsyncWebClient:
    return AsyncWebClient(token="xoxb-test", base_url=slack.api_url)


async def error_of(call: Any) -> str:
    with pytest.raises(SlackApiError) as raised:
        await call
    return str(raised.value.response["error"])


async def test_a_valid_modal_opens_and_can_be_updated_by_its_id(slack: FakeSlackApi) -> None:
    web = client(slack)
    opened = await web.views_open(trigger_id="1.2.3", view=MODAL)
    changed = {**MODAL, "title": {"type": "plain_text", "text": "Saved"}}

    await web.views_update(view_id=opened["view"]["id"], view=changed)

    assert slack.opened_views[-1]["title"]["text"] == "Saved"
    assert await error_of(web.views_update(view_id="VNOPE", view=changed)) == "not_found"


@pytest.mark.parametrize(
    ("view", "trigger"),
    [
        (MODAL, ""),  # no trigger_id
        (HOME, "1.2.3"),  # a Home tab cannot be opened as a modal
        ({**MODAL, "blocks": MODAL["blocks"] * 101}, "1.2.3"),  # over 100 blocks
        ({**MODAL, "title": {"type": "plain_text", "text": "A title far over 24 chars"}}, "1.2.3"),
        ({k: v for k, v in MODAL.items() if k != "submit"}, "1.2.3"),  # inputs but no submit button
    ],
)
async def test_views_open_refuses_what_slack_refuses(
    slack: FakeSlackApi, view: dict[str, Any], trigger: str
) -> None:
    assert await error_of(client(slack).views_open(trigger_id=trigger, view=view)) == "invalid_arguments"
    assert slack.opened_views == []


async def test_an_expired_trigger_cannot_open_a_modal(slack: FakeSlackApi) -> None:
    slack.expired_triggers.add("1.2.3")

    assert await error_of(client(slack).views_open(trigger_id="1.2.3", view=MODAL)) == "expired_trigger_id"


async def test_views_publish_takes_only_a_home_view_for_a_user(slack: FakeSlackApi) -> None:
    web = client(slack)
    await web.views_publish(user_id="U1", view=HOME)

    assert slack.home_views["U1"]["blocks"] == HOME["blocks"]
    assert await error_of(web.views_publish(user_id="U1", view=MODAL)) == "invalid_arguments"
    assert await error_of(web.api_call("views.publish", json={"view": HOME})) == "invalid_arguments"


async def test_conversations_info_names_the_creator_except_for_a_dm(slack: FakeSlackApi) -> None:
    slack.channel_creators["C1"] = "U7"
    web = client(slack)

    channel = (await web.conversations_info(channel="C1"))["channel"]
    dm = (await web.conversations_info(channel="D1"))["channel"]

    assert channel["creator"] == "U7" and channel["is_channel"]
    assert dm["is_im"] and "creator" not in dm
