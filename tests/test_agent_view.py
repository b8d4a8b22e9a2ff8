"""The agent Messages tab through the bot's real endpoint: suggested prompts, DM titles, and the channel a
person views reaching the model's system prompt (its name only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.settings import SettingsError
from bot.slack.agent_view import load_prompts, thread_title
from tests.fakes.aimlapi import FakeAimlApi, Reply
from tests.harness import Bot, eventually, make_settings, mention, message, running_bot
from tests.test_metrics import scrape

ROOT = Path(__file__).resolve().parent.parent


def tab_opened(tab: str, channel: str = "D1") -> dict[str, Any]:
    return {"type": "app_home_opened", "user": "U1", "channel": channel, "tab": tab, "event_ts": "1.000001"}


def context_changed(*entities: dict[str, Any], channel: str = "D1") -> dict[str, Any]:
    context: dict[str, Any] = {"entities": list(entities)} if entities else {}
    return {"type": "app_context_changed", "user": "U1", "channel": channel, "context": context}


def viewing(channel: str) -> dict[str, Any]:
    return {"type": "slack#/types/channel_id", "value": channel, "team_id": "T1"}


def dm(text: str, ts: str, thread_ts: str | None = None) -> dict[str, Any]:
    return message(text, ts, channel="D1", channel_type="im", thread_ts=thread_ts)


def system_prompt(aiml: FakeAimlApi, index: int = -1) -> str:
    first = aiml.chat_requests[index].json["messages"][0]
    assert first["role"] == "system"
    return str(first["content"])


@pytest.fixture
async def bot(db_url, slack, aiml):
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as running:
        yield running


# ---- suggested prompts ---------------------------------------------------------------------------


async def test_opening_the_messages_tab_suggests_the_four_default_prompts_for_glm5(bot, slack):
    response = await bot.send(tab_opened("messages"))
    await bot.idle()

    assert response.status_code == 200
    title, prompts = slack.suggested_prompts["D1"]
    assert title == "What can I help with?"
    assert [t for t, _ in prompts] == [
        "Review my code",
        "Explain an error",
        "Summarise a text",
        "Draft a message",
    ]
    assert all(message.strip() for _, message in prompts)


async def test_the_suggested_prompts_come_from_the_configured_prompts_file(db_url, slack, aiml, tmp_path):
    prompts = tmp_path / "prompts.toml"
    prompts.write_text(
        '[[prompts]]\ntitle = "Plan a sprint"\nmessage = "Help me plan a two-week sprint for:"\n',
        encoding="utf-8",
    )
    settings = make_settings(db_url, slack, aiml, agent_prompts_file=prompts)
    async with running_bot(settings, slack, aiml) as bot:
        await bot.send(tab_opened("messages", channel="D7"))
        await bot.idle()

    assert slack.suggested_prompts == {
        "D7": (None, [("Plan a sprint", "Help me plan a two-week sprint for:")])
    }


async def test_opening_the_home_tab_sets_no_prompts(bot, slack):
    await bot.send(tab_opened("home"))
    await bot.idle()

    assert slack.suggested_prompts == {}
    assert slack.calls_to("assistant.threads.setSuggestedPrompts") == []


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[[prompts]]\ntitle = 'A'\n", "prompt 1 needs exactly a `title` and a `message`"),
        ("".join(f"[[prompts]]\ntitle = '{n}'\nmessage = 'm'\n" for n in range(5)), "1 to 4 [[prompts]]"),
        ("prompts = [", "not valid TOML"),
        ("title = ''\n[[prompts]]\ntitle = 'A'\nmessage = 'm'\n", "`title` must be non-empty"),
    ],
)
def test_a_bad_prompts_file_is_refused_in_one_line_naming_the_setting(tmp_path, content, problem):
    path = tmp_path / "prompts.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SettingsError) as refused:
        load_prompts(path)
    assert str(refused.value).startswith("AGENT_PROMPTS_FILE: ")
    assert problem in str(refused.value)


def test_the_shipped_prompts_file_loads():
    assert len(load_prompts(ROOT / "config" / "prompts.toml").prompts) == 4


# ---- titles --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "title"),
    [
        ("  How do I   rotate a password?  ", "How do I rotate a password?"),
        ("```\nTraceback (most recent call last)\n```\nwhat does this mean?", "what does this mean?"),
        (
            "Please review this Terraform module for security problems and naming consistency issues",
            "Please review this Terraform module for security problems…",
        ),
        ("# Heading\n\nbody", "Heading"),
        ("wrapped\nfirst paragraph\n\nsecond one", "wrapped first paragraph"),
        ("```\nonly code\n```", None),
        ("", None),
    ],
)
def test_a_title_is_the_first_line_of_prose_trimmed_to_a_word_end(question, title):
    assert thread_title(question) == title


async def test_a_new_dm_conversation_is_titled_from_its_first_question_and_a_follow_up_does_not_retitle(
    bot, slack, aiml
):
    aiml.enqueue(Reply(content="Use ALTER ROLE."), Reply(content="Yes."))
    await bot.send(dm("How do I rotate a\n Postgres password?", "500.000001"))
    await bot.idle()
    await eventually(lambda: ("D1", "500.000001") in slack.titles)
    await bot.send(dm("And without downtime?", "500.000002", thread_ts="500.000001"))
    await bot.idle()

    assert slack.titles == {("D1", "500.000001"): "How do I rotate a Postgres password?"}
    assert len(slack.calls_to("assistant.threads.setTitle")) == 1
    assert bot.answer("D1", "500.000001") == "Use ALTER ROLE.Yes."


async def test_channel_conversations_get_no_title(bot, slack, aiml):
    aiml.enqueue(Reply(content="Hi."))
    await bot.send(mention("hello", "600.000001"))
    await bot.idle()

    assert bot.answer("C1", "600.000001") == "Hi."
    assert slack.calls_to("assistant.threads.setTitle") == []


async def test_an_answer_is_not_held_up_when_slack_refuses_the_title(bot, slack, aiml):
    slack.fail_next("assistant.threads.setTitle", error="invalid_arguments")
    aiml.enqueue(Reply(content="Answered."))
    await bot.send(dm("a question", "650.000001"))
    await bot.idle()

    assert bot.answer("D1", "650.000001") == "Answered."


# ---- the channel in view -------------------------------------------------------------------------


async def test_the_channel_in_view_reaches_the_models_system_prompt_by_name_only(bot, slack, aiml):
    slack.channel_names["C7"] = "eng-oncall"
    slack.add_message("C7", "incident: the payments database is down", user="U2")
    aiml.enqueue(Reply(content="Sure."), Reply(content="Again."))

    assert (await bot.send(context_changed(viewing("C7")))).status_code == 200
    await bot.idle()
    await bot.send(dm("what should I do next?", "700.000001"))
    await bot.idle()
    await bot.send(dm("and then?", "700.000002", thread_ts="700.000001"))
    await bot.idle()

    for index in (0, 1):
        prompt = system_prompt(aiml, index)
        assert "#eng-oncall" in prompt
        assert "payments database" not in prompt
    # The user's own text stays the last message; the channel's messages were never read.
    assert aiml.chat_requests[0].json["messages"][-1] == {
        "role": "user",
        "content": "what should I do next?",
    }
    read = {c.method for c in slack.calls} & {"conversations.history", "conversations.replies"}
    assert read == set()
    assert len(slack.calls_to("conversations.info")) == 1  # the name is cached


async def test_a_later_context_replaces_the_earlier_one_and_an_empty_one_clears_it(bot, slack, aiml):
    slack.channel_names |= {"C7": "eng-oncall", "C8": "design"}
    aiml.enqueue(Reply(content="One."), Reply(content="Two."), Reply(content="Three."))

    await bot.send(context_changed(viewing("C7")))
    await bot.idle()
    await bot.send(context_changed(viewing("C8")))
    await bot.idle()
    await bot.send(dm("first", "710.000001"))
    await bot.idle()
    await bot.send(context_changed())
    await bot.idle()
    await bot.send(dm("second", "710.000002"))
    await bot.idle()

    assert "#design" in system_prompt(aiml, 0) and "#eng-oncall" not in system_prompt(aiml, 0)
    assert "#" not in system_prompt(aiml, 1).split("\n\n")[-1]
    assert "looking at the Slack channel" not in system_prompt(aiml, 1)


async def test_a_channel_the_bot_cannot_see_is_not_named_and_the_answer_still_comes(bot, slack, aiml):
    slack.not_joined.add("G9SECRET")  # private, and the bot is not in it: Slack says channel_not_found
    aiml.enqueue(Reply(content="Fine."))
    await bot.send(context_changed(viewing("G9SECRET")))
    await bot.idle()
    await bot.send(dm("hello", "720.000001"))
    await bot.idle()

    assert bot.answer("D1", "720.000001") == "Fine."
    assert "looking at the Slack channel" not in system_prompt(aiml)


async def test_the_channel_in_view_is_told_only_in_that_dm_and_not_in_channels(bot, slack, aiml):
    slack.channel_names["C7"] = "eng-oncall"
    aiml.enqueue(Reply(content="In D2."), Reply(content="In C1."))
    await bot.send(context_changed(viewing("C7")))
    await bot.idle()
    await bot.send(message("hi", "730.000001", channel="D2", channel_type="im"))
    await bot.idle()
    await bot.send(mention("hi", "730.000002"))
    await bot.idle()

    assert all("eng-oncall" not in system_prompt(aiml, i) for i in (0, 1))


@pytest.mark.parametrize(
    "event",
    [
        {"type": "app_context_changed", "user": "U1", "context": {"entities": [viewing("C7")]}},  # no DM
        {"type": "app_context_changed", "channel": "D1", "context": "not an object"},
        {"type": "app_context_changed", "channel": "D1", "context": {"entities": [42, {"type": None}]}},
        {"type": "app_home_opened", "user": "U1", "tab": "messages"},  # no channel
    ],
)
async def test_malformed_agent_events_are_acknowledged_without_a_crash(bot: Bot, slack, aiml, event):
    response = await bot.send(event)
    await bot.idle()
    aiml.enqueue(Reply(content="Still here."))
    await bot.send(dm("still working?", "740.000001"))
    await bot.idle()

    assert response.status_code == 200
    assert slack.calls_to("assistant.threads.setSuggestedPrompts") == []
    assert bot.answer("D1", "740.000001") == "Still here."
    metrics = await scrape(bot.http)
    ignored = metrics.get(("slackbot_events_ignored_total", (("reason", "malformed"),)), 0)
    assert ignored == (0 if event.get("channel") == "D1" else 1)


# ---- the fake's argument checks, as Slack's -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "arguments"),
    [
        ("assistant.threads.setSuggestedPrompts", {"channel_id": "D1", "prompts": []}),
        (
            "assistant.threads.setSuggestedPrompts",
            {"channel_id": "D1", "prompts": [{"title": str(n), "message": "m"} for n in range(5)]},
        ),
        ("assistant.threads.setSuggestedPrompts", {"channel_id": "D1", "prompts": [{"title": "no message"}]}),
        ("assistant.threads.setTitle", {"channel_id": "D1", "thread_ts": "1.000001", "title": "  "}),
        ("assistant.threads.setTitle", {"channel_id": "D1", "title": "no thread"}),
    ],
)
async def test_the_fake_slack_refuses_what_slack_refuses(slack, method, arguments):
    client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url)
    with pytest.raises(SlackApiError) as refused:
        await client.api_call(method, json=arguments)
    assert refused.value.response["error"] == "invalid_arguments"
    assert slack.suggested_prompts == {} and slack.titles == {}
