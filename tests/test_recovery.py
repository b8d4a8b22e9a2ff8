"""Start-up recovery: replies a crashed process left `streaming` end with an interrupted note."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from bot.slack.recovery import NOTE_RESTARTED, last_part
from bot.slack.text import find_split
from bot.storage.models import Conversation, ConversationKind, Message, MessageStatus, Role, utcnow
from tests.fakes.slack_api import FakeSlackApi
from tests.harness import make_settings, running_bot


async def seed_stale_reply(sessions, slack: FakeSlackApi, content: str, age: timedelta) -> tuple[int, str]:
    shown_ts = slack.add_message(
        "C1", content + " ▍", user=slack.bot_user_id, thread_ts="100.000001", bot_id=slack.bot_id
    )
    async with sessions.begin() as session:
        conversation = Conversation(
            team_id="T1", channel_id="C1", thread_ts="100.000001", kind=ConversationKind.CHANNEL
        )
        session.add(conversation)
        await session.flush()
        message = Message(
            conversation_id=conversation.id,
            role=Role.ASSISTANT,
            content=content,
            status=MessageStatus.STREAMING,
            slack_ts=shown_ts,
            slack_ts_all=[shown_ts],
            created_at=utcnow() - age,
        )
        session.add(message)
        await session.flush()
        return message.id, shown_ts


async def test_a_reply_left_streaming_by_a_crash_is_finished_at_start_up(db_url, sessions, fakes):
    slack, aiml = fakes
    message_id, ts = await seed_stale_reply(sessions, slack, "The first half of", timedelta(minutes=30))

    async with running_bot(make_settings(db_url, slack, aiml), slack):
        pass

    shown = slack.message("C1", ts)
    assert shown.markdown == "The first half of"
    assert NOTE_RESTARTED in shown.context
    async with sessions() as session:
        stored = await session.get(Message, message_id)
    assert stored is not None and stored.status is MessageStatus.INTERRUPTED


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_with_sqlite_even_a_fresh_stale_reply_is_finished_at_start_up(db_url, sessions, fakes):
    slack, aiml = fakes
    message_id, _ = await seed_stale_reply(sessions, slack, "Just begun", timedelta(seconds=1))
    async with running_bot(make_settings(db_url, slack, aiml), slack):
        pass
    async with sessions() as session:
        status = (await session.execute(select(Message.status).where(Message.id == message_id))).scalar_one()
    assert status is MessageStatus.INTERRUPTED


def test_the_last_part_matches_what_the_renderer_put_in_the_last_message():
    content = "\n\n".join(f"Paragraph {i}. " + "words " * 60 for i in range(40))
    first = find_split(content, 3900)
    second = find_split(first.rest(content), 3900)
    assert last_part(content, 1) == first.head(content)
    assert last_part(content, 3) == find_split(second.rest(first.rest(content)), 3900).head(
        second.rest(first.rest(content))
    )
    assert content.endswith(last_part(content, 4))
