"""Text reaches the model and Slack as written: a person's message, and a long streamed answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.conversation.ports import ReplySummary
from bot.slack.edit_budget import EditBudget
from bot.slack.events import strip_bot_mention
from bot.slack.renderer import SlackReply
from tests.fakes.aimlapi import FakeAimlApi, Reply
from tests.harness import Bot, make_settings, message, running_bot

CODE = "fix this:\n\n```python\ndef f(x):\n    if x:\n        return 1\n\n\n    return  2\t# tab\n```\n"


@pytest.fixture
async def bot(db_url, slack, aiml) -> AsyncIterator[Bot]:
    async with running_bot(make_settings(db_url, slack, aiml), slack) as running:
        yield running


def _app_mention(text: str, ts: str, *, thread_ts: str | None = None) -> dict[str, object]:
    event: dict[str, object] = {
        "type": "app_mention",
        "user": "U1",
        "text": text,
        "ts": ts,
        "channel": "C1",
        "event_ts": ts,
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def _sent(aiml: FakeAimlApi) -> list[dict[str, str]]:
    """The conversation messages the model received in the last request (without the system prompt)."""
    messages = aiml.chat_requests[-1].json["messages"]
    assert messages[0]["role"] == "system"
    return [{"role": m["role"], "content": m["content"]} for m in messages[1:]]


async def test_indented_code_after_a_mention_reaches_the_model_unchanged(bot, aiml):
    aiml.enqueue(Reply(content="Fixed."))
    await bot.send(_app_mention("<@UBOT> " + CODE, "500.000001"))
    await bot.idle()
    assert _sent(aiml) == [{"role": "user", "content": CODE}]


async def test_a_mention_on_its_own_line_leaves_the_code_below_it_intact(bot, aiml):
    aiml.enqueue(Reply(content="Fixed."))
    indented = "    if x:\n        return 1\n"
    await bot.send(_app_mention("<@UBOT>\n" + indented, "500.000001"))
    await bot.idle()
    assert _sent(aiml) == [{"role": "user", "content": indented}]


async def test_a_direct_message_keeps_its_leading_indentation_and_blank_lines(bot, aiml):
    aiml.enqueue(Reply(content="Fixed."))
    text = "    x = 1\n\n\n    y  =  2   "
    await bot.send(message(text, "600.000001", channel="D1", channel_type="im"))
    await bot.idle()
    assert _sent(aiml) == [{"role": "user", "content": text}]


async def test_backfilled_thread_messages_keep_their_indentation(bot, slack, aiml):
    root = slack.add_message("C1", "Here is my code:\n    for i in range(3):\n        print(i)", user="U2")
    slack.add_message("C1", "<@UBOT>   and   mine:\n\tindented", user="U3", thread_ts=root)
    aiml.enqueue(Reply(content="Both fine."))
    await bot.send(_app_mention("<@UBOT> which is better?", "1700000001.000000", thread_ts=root))
    await bot.idle()
    sent = [m["content"] for m in _sent(aiml)]
    assert len(sent) == 3
    # Whatever label the backfill puts around a message, the person's text is inside it verbatim.
    assert "Here is my code:\n    for i in range(3):\n        print(i)" in sent[0]
    assert "  and   mine:\n\tindented" in sent[1]
    assert sent[2] == "which is better?"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<@UBOT> hello", "hello"),
        ("<@UBOT>  two spaces kept after the separator", " two spaces kept after the separator"),
        ("<@UBOT>\n    indented", "    indented"),
        ("<@UBOT>\r\n    indented", "    indented"),
        ("<@UBOT>\n\n    after a blank line", "    after a blank line"),
        ("hello <@UBOT>", "hello"),
        ("code:\n    x = 1\n<@UBOT>", "code:\n    x = 1"),
        ("ask <@UBOT> about    spacing", "ask about    spacing"),
        ("ask <@UBOT>, please", "ask, please"),
        ("<@UBOT|glm> hi", "hi"),
        ("<@UBOT>", ""),
        ("  leading  and  trailing  ", "  leading  and  trailing  "),
        ("<@U2> keep   other   mentions", "<@U2> keep   other   mentions"),
        ("\tcode\n\n\n\tmore", "\tcode\n\n\n\tmore"),
    ],
)
def test_only_the_bot_mention_and_its_separator_are_removed(text: str, expected: str) -> None:
    assert strip_bot_mention(text, "UBOT") == expected


def test_without_a_bot_id_the_text_is_unchanged() -> None:
    assert strip_bot_mention("  a  b\n\n", None) == "  a  b\n\n"


async def test_a_200_kb_answer_in_one_character_deltas_reaches_slack_exactly(slack):
    # The renderer keeps the unsent answer as a list of deltas (joined once per edit), so this is
    # linear; it once copied the whole answer on every delta. Timing is in the benchmark, not here.
    answer = ("Lorem ipsum dolor sit amet, 中文句子。 👨\u200d👩\u200d👧 e\u0301 " * 4 + "\n\n") * 1_150
    assert len(answer) >= 200_000
    # 50+ messages in one thread: Slack's one post a second per channel would make this a minute of
    # waiting that proves nothing here (posting under the real limit is tested in test_renderer).
    del slack.limits["chat.postMessage"]
    client = AsyncWebClient(base_url=slack.api_url, token="xoxb-test")
    root = slack.add_message("C1", "<@UBOT> a long one")
    reply = SlackReply(client, EditBudget(), "C1", root, interval=0.05)
    await reply.start()
    for i, char in enumerate(answer):
        await reply.append(char)
        if i % 97 == 0:
            await asyncio.sleep(0)  # let the editor seal messages while deltas keep coming
    await reply.finish(ReplySummary("zhipu/glm-5", 1, 1, 1, "stop"))

    shown = [slack.message("C1", ts) for ts in reply.refs]
    assert len(shown) >= 50
    assert "".join(m.markdown for m in shown) == answer
    assert all(len(m.text) <= 4_000 for m in shown)
