"""Nothing the model writes can ping a channel, a user group, everyone or a person, in any Slack call.

The fake AI/ML API answers with every broadcast form Slack knows; the test then reads every call
the fake Slack received (each method, each field, blocks included, interim edits and final ones).
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest

from bot.slack.text import defuse
from tests.fakes.aimlapi import Reply
from tests.fakes.slack_api import FakeSlackApi
from tests.harness import Bot, make_settings, mention, running_bot
from tests.test_recovery import seed_stale_reply

BROADCASTS = [
    "<!channel>",
    "<!here>",
    "<!everyone>",
    "<!here|here>",
    "<!channel|@channel>",
    "<!subteam^S0123ABCD>",
    "<!subteam^S0123ABCD|@oncall>",
    "<@U0123ABCD>",  # one person, which a hostile prompt could repeat a hundred times
    "<@W0123ABCD|someone>",
    "&lt;!everyone&gt;",  # escaped: a Markdown renderer decodes entities
    "&#60;!here&#62;",
    "&lt!channel&gt",  # HTML decodes these without the semicolon as well
    "&#x3C;@U0123ABCD&#x3E;",
    "@here",
    "@channel",
    "@everyone",
    "@HERE",
]
ANSWER = (
    "Telling " + ", ".join(BROADCASTS) + " about it.\n\n"
    "In code: `<!channel>` and `@everyone`\n\n```\nping(<!here>)  # and <@U0123ABCD>\n```\n"
    "Mail ops@channel.example.com; see https://example.com/@here/page.\n"
)
WORD_JOINER = "\u2060"

# What Slack would turn into a notification: a control sequence opening with `<!` or `<@` (raw or
# after entity decoding), or a bare @here/@channel/@everyone that is not part of an address.
_LIVE = re.compile(r"<[!@]|(?<![\w.+\-/])@(?:here|channel|everyone)\b", re.IGNORECASE)


@pytest.fixture
async def bot(db_url, slack, aiml) -> AsyncIterator[Bot]:
    async with running_bot(make_settings(db_url, slack, aiml), slack) as running:
        yield running


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")


def _live_tokens(slack: FakeSlackApi) -> list[tuple[str, str, str]]:
    """(method, field, token) for every live broadcast in any call the fake Slack received."""
    found = []
    for call in slack.calls:
        for path, value in _strings(call.params):
            for match in _LIVE.finditer(html.unescape(value)):
                found.append((call.method, path, match.group()))
    return found


async def test_no_slack_call_carries_a_live_broadcast_from_the_model(bot, slack, aiml):
    aiml.enqueue(Reply(content=ANSWER, chunk_size=3, chunk_interval=0.002))
    await bot.send(mention("ping everyone for me", "900.000001"))
    await bot.idle(timeout=30)

    assert len(slack.calls_to("chat.update")) >= 3, "interim edits were made"
    assert _live_tokens(slack) == []
    # It still reads as the model wrote it: only invisible word joiners were added.
    assert bot.answer("C1", "900.000001").replace(WORD_JOINER, "") == ANSWER
    [reply] = bot.replies("C1", "900.000001")
    assert reply.text.replace(WORD_JOINER, "") == ANSWER
    assert "ops@channel.example.com" in reply.markdown, "addresses are left alone"


async def test_a_long_answer_full_of_broadcasts_is_defused_in_every_message(bot, slack, aiml):
    answer = "".join(f"{token} line {i}\n" for i in range(80) for token in BROADCASTS[:6])
    assert len(answer) > 8_000
    aiml.enqueue(Reply(content=answer, chunk_size=40))
    await bot.send(mention("spam", "900.000002"))
    await bot.idle(timeout=60)

    replies = bot.replies("C1", "900.000002")
    assert len(replies) >= 3
    assert _live_tokens(slack) == []
    assert all(len(m.text) <= 4_000 for m in replies)
    assert bot.answer("C1", "900.000002").replace(WORD_JOINER, "") == answer


async def test_every_reply_message_is_posted_without_link_or_media_previews(bot, slack, aiml):
    answer = "See https://example.com/x and ![img](https://example.com/a.png)\n\n" + "word " * 1_000
    aiml.enqueue(Reply(content=answer, chunk_size=200))
    await bot.send(mention("links please", "900.000003"))
    await bot.idle(timeout=30)

    posts = slack.calls_to("chat.postMessage")
    assert len(posts) >= 2, "the answer continued in a second message"
    assert all(p.params.get("unfurl_links") is False for p in posts)
    assert all(p.params.get("unfurl_media") is False for p in posts)


async def test_recovery_does_not_revive_a_broadcast_in_a_reply_left_streaming(db_url, sessions, fakes):
    slack, aiml = fakes
    _, ts = await seed_stale_reply(sessions, slack, "Hey <!channel> and @here, look", timedelta(hours=1))
    slack.calls.clear()  # the seeded message itself is the person's test setup, not the bot's call

    async with running_bot(make_settings(db_url, slack, aiml), slack):
        pass

    assert slack.calls_to("chat.update"), "recovery edited the message"
    assert _live_tokens(slack) == []
    assert slack.message("C1", ts).markdown.replace(WORD_JOINER, "") == "Hey <!channel> and @here, look"


@pytest.mark.parametrize("token", BROADCASTS)
def test_defuse_breaks_every_broadcast_form(token: str) -> None:
    defused = defuse(f"a {token} b")
    assert not _LIVE.search(html.unescape(defused))
    assert defused.replace(WORD_JOINER, "") == f"a {token} b"


@pytest.mark.parametrize(
    "text",
    [
        "plain text, a < b > c & d",
        "mail ops@here.example.com or a.b@channel.io",
        "<#C0123ABCD> and <https://example.com|a link>",
        "email+tag@everyone.org",
        "",
    ],
)
def test_defuse_leaves_text_without_broadcasts_as_it_is(text: str) -> None:
    assert defuse(text) == text
