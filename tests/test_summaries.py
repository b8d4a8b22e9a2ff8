"""Summaries through the real endpoint: the "Summarise thread" shortcut and `/glm summarize`, each one
completion over the messages the asker may read, shown only to them, with its usage row."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from bot.conversation.admission import Candidate, Refused, Reservation
from bot.conversation.service import TurnOutcome
from bot.conversation.summaries import Summarizer
from bot.slack.glm_command import GlmRequest
from bot.slack.people import UserDirectory
from bot.slack.summaries import Summaries
from bot.storage.models import UsageRecord
from tests.fakes.aimlapi import FakeAimlApi, Reply
from tests.fakes.response_url import ResponseUrl
from tests.fakes.slack_api import FakeSlackApi, FakeUser
from tests.harness import Bot, eventually, make_settings, running_bot
from tests.test_metrics import scrape


@pytest.fixture
async def response_url() -> AsyncIterator[ResponseUrl]:
    endpoint = ResponseUrl()
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


@pytest.fixture
async def bot(db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi) -> AsyncIterator[Bot]:
    slack.users |= {"U1": FakeUser("Ada Lovelace"), "U2": FakeUser("Bob Builder")}
    slack.stamp_from(time.time() - 3_600)
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as running:
        yield running


def shortcut(channel: str, message: dict[str, Any], user: str, response_url: str) -> dict[str, Any]:
    """A "Summarise thread" press on `message`, as Slack posts a message shortcut."""
    return {
        "type": "message_action",
        "token": "legacy",
        "action_ts": f"{time.time():.6f}",
        "team": {"id": "T1", "domain": "fake"},
        "user": {"id": user, "username": user.lower(), "team_id": "T1"},
        "channel": {"id": channel, "name": channel.lower()},
        "callback_id": "summarise_thread",
        "trigger_id": "1.2.3",
        "message_ts": message["ts"],
        "message": message,
        "response_url": response_url,
    }


async def usage_rows(bot: Bot) -> list[UsageRecord]:
    assert bot.runtime.core is not None
    async with bot.runtime.core.sessions() as session:
        return list(await session.scalars(select(UsageRecord)))


async def test_the_shortcut_posts_a_summary_of_the_thread_only_for_the_person_with_its_usage_row(
    bot: Bot, slack: FakeSlackApi, aiml: FakeAimlApi, response_url: ResponseUrl
) -> None:
    root = slack.add_message("C1", "Where do we hold the offsite?", user="U1")
    reply = slack.add_message("C1", "Lisbon, in May", user="U2", thread_ts=root)
    aiml.enqueue(Reply(content="**Offsite:** Bob suggests Lisbon in May.", credits_used=900))
    pressed_on = slack.message("C1", reply).as_api()

    response = await bot.interact(shortcut("C1", pressed_on, "U1", response_url.url))
    assert response.status_code == 200
    await bot.idle()

    sent = aiml.chat_requests[-1].json["messages"]
    assert (
        "Where do we hold the offsite?" in sent[-1]["content"]
        and "@Bob Builder: Lisbon, in May" in (sent[-1]["content"])
    )
    assert "tools" not in aiml.chat_requests[-1].json  # one completion, no tool loop
    [note] = slack.ephemerals
    assert (note.channel, note.user, note.thread_ts) == ("C1", "U1", root)
    assert note.blocks is not None and note.blocks[0] == {
        "type": "markdown",
        "text": "**Offsite:** Bob suggests Lisbon in May.",
    }
    assert "Summary of 2 messages · 900 credits" in str(note.blocks[1])
    assert slack.thread("C1", root)[-1].ts == reply  # nothing posted in the thread for everyone
    counted = await scrape(bot.http)
    assert counted[("slackbot_summaries_total", (("outcome", "complete"),))] == 1
    assert counted[("slackbot_slack_reads_total", (("outcome", "ok"), ("what", "thread")))] == 1
    assert counted[("slackbot_credits_used_total", ())] == 900  # counted as the ledger counts it
    [row] = await usage_rows(bot)
    assert (row.user_id, row.channel_id, row.conversation_id, row.credits_used, row.status) == (
        "U1",
        "C1",
        None,
        900,
        "complete",
    )


async def test_the_shortcut_in_a_private_channel_the_person_left_is_refused_without_a_model_call(
    bot: Bot, slack: FakeSlackApi, aiml: FakeAimlApi, response_url: ResponseUrl
) -> None:
    slack.private_channels.add("CPRIV")
    slack.channel_members["CPRIV"] = ["U2", "UBOT"]
    root = slack.add_message("CPRIV", "salary bands", user="U2")

    await bot.interact(shortcut("CPRIV", slack.message("CPRIV", root).as_api(), "U1", response_url.url))
    answer = await response_url.next_answer()
    await bot.idle()

    assert "not a member" in answer["text"] and answer["response_type"] == "ephemeral"
    counted = await scrape(bot.http)
    assert counted[("slackbot_slack_reads_total", (("outcome", "not_allowed"), ("what", "thread")))] == 1
    assert aiml.chat_requests == [] and slack.ephemerals == []
    assert await usage_rows(bot) == []


async def test_glm_summarize_a_channel_over_a_window_is_an_ephemeral_summary_with_usage(
    bot: Bot, slack: FakeSlackApi, aiml: FakeAimlApi, response_url: ResponseUrl
) -> None:
    slack.channel_names["CGEN"] = "general"
    slack.add_message("CGEN", "Deploy is green", user="U1")
    slack.add_message("CGEN", "Release notes are out", user="U2")
    aiml.enqueue(Reply(content="Deploy green; notes out.", credits_used=700))

    # Typed as Slack sends it with should_escape off: the name, not the id.
    response = await bot.command(
        "/glm", "summarize #general 24h", user="U1", channel="C1", response_url=response_url.url
    )
    assert response.status_code == 200
    await eventually(lambda: bool(slack.ephemerals))
    await bot.idle()

    content = aiml.chat_requests[-1].json["messages"][-1]["content"]
    assert content.startswith("Summarise #general over the last 24h.")
    assert content.index("Deploy is green") < content.index("Release notes are out")
    [note] = slack.ephemerals
    assert (note.channel, note.user) == ("C1", "U1") and note.text == "Deploy green; notes out."
    [row] = await usage_rows(bot)
    assert (row.user_id, row.channel_id, row.credits_used) == ("U1", "CGEN", 700)


async def test_glm_summarize_explains_a_bad_argument_and_an_empty_window_costs_nothing(
    bot: Bot, slack: FakeSlackApi, aiml: FakeAimlApi, response_url: ResponseUrl
) -> None:
    await bot.command("/glm", "summarize #nowhere", user="U1", response_url=response_url.url)
    bad = await response_url.next_answer()
    await bot.command("/glm", "summarize 1h", user="U1", response_url=response_url.url)
    await eventually(lambda: bool(slack.ephemerals))
    await bot.idle()

    assert "I don't know a channel `#nowhere` that I am in" in bad["text"]
    assert slack.ephemerals[-1].text == "There are no messages to summarise in #c1 over the last 1h."
    assert aiml.chat_requests == [] and await usage_rows(bot) == []


class BlockEveryone:
    """An admission stage (as the access lists are) that refuses every person."""

    needs_person = False

    async def check(self, candidate: Candidate) -> Refused | None:
        return Refused("blocked", notice=f"Sorry {candidate.arrival.user_id}, not here.")


async def test_a_person_the_admission_stages_refuse_gets_their_notice_and_no_summary(
    bot: Bot, slack: FakeSlackApi, aiml: FakeAimlApi
) -> None:
    runtime = bot.runtime
    assert runtime.reader is not None and runtime.core is not None
    slack.add_message("C1", "Deploy is green", user="U1")
    summaries = Summaries(
        runtime.reader, Summarizer(runtime.core.llm, runtime.core.ledger), UserDirectory(runtime.client),
        stages=(BlockEveryone(),),
    )  # fmt: skip
    request = GlmRequest("T1", "C1", "U1", "", "1.2.3", is_admin=False, client=runtime.client)

    assert await summaries.command(request) == "Sorry U1, not here."
    assert aiml.chat_requests == [] and slack.calls_to("conversations.history") == []


class RecordingQuota:
    """A quota stage (as wip/quota's is) that holds credits and records how each hold ended."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.ended: list[tuple[str, int | None]] = []
        self.asked: list[tuple[str, str]] = []

    async def plan(self, arrival: object, channel: object) -> None:  # noqa: ARG002
        return None  # every hold is taken after the checks

    async def reserve(self, candidate: Candidate, *, near: bool = False) -> Reservation | Refused:  # noqa: ARG002
        self.asked.append((candidate.arrival.user_id, candidate.arrival.key.channel_id))
        if self.refuse:
            return Refused("quota", notice="You have used your credits for today.")
        quota = self

        class Held:
            async def extend(self, prompt_tokens: int, max_output_tokens: int) -> str | None:
                quota.ended.append(("extended", prompt_tokens + max_output_tokens))
                return None

            def hand_over(self) -> int | None:
                return None

            async def settle(self, outcome: TurnOutcome) -> None:
                assert outcome.usage is not None
                quota.ended.append(("settled", outcome.usage.usage.credits_used))

            async def release(self) -> None:
                quota.ended.append(("released", None))

        return Held()


async def test_a_summary_holds_credits_like_a_turn_and_a_reached_quota_stops_it(
    bot: Bot, slack: FakeSlackApi, aiml: FakeAimlApi
) -> None:
    runtime = bot.runtime
    assert runtime.reader is not None and runtime.core is not None
    slack.add_message("C1", "Deploy is green", user="U1")
    aiml.enqueue(Reply(content="All green.", credits_used=321))
    quota, spent = RecordingQuota(), RecordingQuota(refuse=True)
    summarizer = Summarizer(runtime.core.llm, runtime.core.ledger)
    people = UserDirectory(runtime.client)
    request = GlmRequest("T1", "C1", "U1", "", "1.2.3", is_admin=False, client=runtime.client)

    assert await Summaries(runtime.reader, summarizer, people, quota=quota).command(request) is None
    assert await Summaries(runtime.reader, summarizer, people, quota=spent).command(request) is None

    assert quota.asked == spent.asked == [("U1", "C1")]
    assert [e for e, _ in quota.ended] == ["extended", "settled"] and quota.ended[-1] == ("settled", 321)
    assert [e.text for e in slack.ephemerals] == ["All green.", "You have used your credits for today."]
    assert len(aiml.chat_requests) == 1
