"""Who may use the bot where, through the real endpoint (signed events), the fake Slack and AI/ML API,
on SQLite and PostgreSQL: a refused person gets one private note naming who to ask, never a model
call or a reply others see, and each refusal is counted with its reason."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from bot.conversation.channel_settings import ChannelMode, ChannelSettings
from bot.storage.models import utcnow
from bot.storage.refusal_notices import claim_notice
from tests.fakes.aimlapi import FakeAimlApi, Reply
from tests.fakes.slack_api import FakeSlackApi, FakeUser
from tests.harness import Bot, make_settings, mention, message, running_bot

ROOT = "1700000001.000000"
ADMINS = "UADM1,UADM2"


@dataclass
class ChannelTable:
    """Channel settings as an admin set them (the database table's stand-in at this seam)."""

    modes: dict[str, ChannelSettings] = field(default_factory=dict)

    async def for_channel(self, team_id: str, channel_id: str) -> ChannelSettings:  # noqa: ARG002
        return self.modes.get(channel_id, ChannelSettings())


async def ignored(bot: Bot, reason: str) -> float:
    text = (await bot.http.get("/metrics")).text
    found = re.search(rf'^slackbot_events_ignored_total{{reason="{reason}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def refused_once(
    db_url: str,
    slack: FakeSlackApi,
    aiml: FakeAimlApi,
    event: dict[str, Any],
    reason: str,
    *,
    channel_settings: ChannelTable | None = None,
    **overrides: Any,
) -> str:
    """Send `event`, check that it was refused for `reason` as a person sees it; the note's text."""
    settings = make_settings(db_url, slack, aiml, admin_user_ids=ADMINS, **overrides)
    async with running_bot(settings, slack, aiml, channel_settings=channel_settings) as bot:
        await bot.send(event)
        await bot.idle()
        assert await ignored(bot, reason) == 1
    assert aiml.requests == []
    assert slack.calls_to("chat.postMessage") == [] and slack.calls_to("chat.update") == []
    [note] = slack.ephemerals
    assert note.user == event["user"] and note.channel == event["channel"]
    return note.text


async def test_a_guest_is_told_privately_whom_to_ask_and_the_model_is_never_called(db_url, slack, aiml):
    slack.users["U7"] = FakeUser(real_name="Visitor", is_restricted=True)
    note = await refused_once(db_url, slack, aiml, mention("hi", ROOT, user="U7"), "guest")
    assert "Guest accounts" in note and "<@UADM1>, <@UADM2>" in note


async def test_a_single_channel_guest_is_refused_too_and_allow_guests_lets_both_in(db_url, slack, aiml):
    slack.users["U7"] = FakeUser(real_name="Visitor", is_ultra_restricted=True)
    await refused_once(db_url, slack, aiml, mention("hi", ROOT, user="U7"), "guest")

    slack.ephemerals.clear()
    aiml.enqueue(Reply(content="Welcome."))
    settings = make_settings(db_url, slack, aiml, allow_guests=True)
    async with running_bot(settings, slack, aiml) as bot:
        await bot.send(mention("hi again", "1700000002.000000", user="U7"))
        await bot.idle()
        assert bot.answer("C1", "1700000002.000000") == "Welcome."
    assert slack.ephemerals == []


async def test_a_slack_connect_user_from_another_organisation_is_refused_unless_allowed(db_url, slack, aiml):
    slack.users["UEXT"] = FakeUser(real_name="Partner", team_id="T2")
    note = await refused_once(db_url, slack, aiml, mention("hi", ROOT, user="UEXT"), "external")
    assert "workspace that installed me" in note

    aiml.enqueue(Reply(content="Hello, partner."))
    async with running_bot(make_settings(db_url, slack, aiml, allow_external=True), slack, aiml) as bot:
        await bot.send(mention("hi", "1700000002.000000", user="UEXT"))
        await bot.idle()
        assert bot.answer("C1", "1700000002.000000") == "Hello, partner."


async def test_a_blocked_user_is_refused_even_when_on_the_allow_list(db_url, slack, aiml):
    event = mention("hi", ROOT, user="U1")
    note = await refused_once(
        db_url, slack, aiml, event, "user_blocked", allowed_users="U1,U2", blocked_users="U1"
    )
    assert "You don't have access" in note


async def test_someone_missing_from_the_allow_list_is_refused_and_those_on_it_are_answered(
    db_url, slack, aiml
):
    aiml.enqueue(Reply(content="Yes, U2."))
    settings = make_settings(db_url, slack, aiml, allowed_users="U2")
    async with running_bot(settings, slack, aiml) as bot:
        await bot.send(mention("me?", ROOT, user="U1"))
        await bot.send(mention("and me?", "1700000002.000000", user="U2"))
        await bot.idle()
        assert await ignored(bot, "user_not_allowed") == 1
        assert bot.replies("C1", ROOT) == []
        assert bot.answer("C1", "1700000002.000000") == "Yes, U2."
    assert len(aiml.requests) == 1
    assert [n.user for n in slack.ephemerals] == ["U1"]


async def test_a_blocked_channel_is_refused_and_so_is_one_missing_from_the_allow_list(db_url, slack, aiml):
    await refused_once(
        db_url, slack, aiml, mention("hi", ROOT, channel="C9"), "channel_blocked", blocked_channels="C9"
    )
    slack.ephemerals.clear()
    elsewhere = mention("hi", ROOT, channel="C8", user="U2")  # U1 was told within the hour
    await refused_once(db_url, slack, aiml, elsewhere, "channel_not_allowed", allowed_channels="C1")


async def test_a_direct_message_is_refused_when_dms_are_disabled(db_url, slack, aiml):
    dm = message("hello", ROOT, channel="D1", channel_type="im")
    note = await refused_once(db_url, slack, aiml, dm, "dms_disabled", dms_enabled=False)
    assert "direct messages" in note


async def test_a_channel_switched_off_tells_whoever_mentions_the_bot(db_url, slack, aiml):
    table = ChannelTable({"C1": ChannelSettings(mode=ChannelMode.OFF)})
    note = await refused_once(db_url, slack, aiml, mention("hi", ROOT), "channel_off", channel_settings=table)
    assert "switched off" in note


async def test_a_mentions_only_channel_answers_mentions_but_not_follow_ups(db_url, slack, aiml):
    table = ChannelTable({"C1": ChannelSettings(mode=ChannelMode.MENTIONS)})
    aiml.enqueue(Reply(content="Mentioned."))
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml, channel_settings=table) as bot:
        await bot.send(mention("first", ROOT))
        await bot.idle()
        await bot.send(message("a follow-up without a mention", "1700000002.000000", thread_ts=ROOT))
        await bot.idle()
        assert await ignored(bot, "followups_off") == 1
    assert len(aiml.requests) == 1 and slack.ephemerals == []


async def test_a_channel_without_followups_answers_only_mentions_in_its_threads(db_url, slack, aiml):
    table = ChannelTable({"C1": ChannelSettings(followups=False)})
    aiml.enqueue(Reply(content="Mentioned."))
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml, channel_settings=table) as bot:
        await bot.send(mention("first", ROOT))
        await bot.idle()
        await bot.send(message("a follow-up", "1700000002.000000", thread_ts=ROOT))
        await bot.idle()
        assert await ignored(bot, "followups_off") == 1
    assert len(aiml.requests) == 1


async def test_repeated_attempts_get_one_note_an_hour_and_each_is_counted(db_url, slack, aiml):
    slack.users["U7"] = FakeUser(real_name="Visitor", is_restricted=True)
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as bot:
        for n in range(3):
            await bot.send(mention(f"try {n}", f"170000000{n + 1}.000000", user="U7"))
            await bot.idle()
        assert await ignored(bot, "guest") == 3
    # A restart (or another replica) remembers the note: still one.
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as bot:
        await bot.send(mention("once more", "1700000009.000000", user="U7"))
        await bot.idle()
    assert aiml.requests == [] and len(slack.ephemerals) == 1


async def test_a_note_may_be_sent_again_once_the_hour_is_over(sessions):
    hour, now = timedelta(hours=1), utcnow()
    async with sessions.begin() as session:
        assert await claim_notice(session, "T1", "U7", now=now, every=hour)
        assert not await claim_notice(session, "T1", "U7", now=now + timedelta(minutes=59), every=hour)
        assert await claim_notice(session, "T1", "U8", now=now, every=hour)  # someone else
        assert await claim_notice(session, "T1", "U7", now=now + timedelta(minutes=61), every=hour)


async def test_when_slack_cannot_say_who_asks_the_bot_refuses_rather_than_risk_letting_a_guest_in(
    db_url, slack, aiml
):
    slack.fail_next("users.info", error="internal_error", times=3)
    note = await refused_once(db_url, slack, aiml, mention("hi", ROOT), "person_unknown")
    assert "try again" in note


async def test_when_guests_and_other_organisations_are_allowed_nobody_is_looked_up(db_url, slack, aiml):
    slack.fail_next("users.info", error="internal_error", times=3)
    aiml.enqueue(Reply(content="Open to all."))
    settings = make_settings(db_url, slack, aiml, allow_guests=True, allow_external=True)
    async with running_bot(settings, slack, aiml) as bot:
        await bot.send(mention("hi", ROOT))
        await bot.idle()
        assert bot.answer("C1", ROOT) == "Open to all."
    assert slack.calls_to("users.info") == []


async def test_a_refused_mention_does_not_open_its_thread_to_follow_ups(db_url, slack, aiml):
    slack.users["U7"] = FakeUser(real_name="Visitor", is_restricted=True)
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as bot:
        await bot.send(mention("hi", ROOT, user="U7"))
        await bot.idle()
        await bot.send(message("me too", "1700000002.000000", thread_ts=ROOT, user="U2"))
        await bot.idle()
        assert await ignored(bot, "thread_not_joined") == 1
    assert aiml.requests == []


async def test_a_refusal_is_judged_afresh_on_redelivery_once_the_account_can_be_checked(db_url, slack, aiml):
    slack.fail_next("users.info", error="internal_error")
    aiml.enqueue(Reply(content="Now I know you."))
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as bot:
        await bot.send(mention("hi", ROOT), event_id="EvSame")
        await bot.idle()
        await bot.send(mention("hi", ROOT), event_id="EvSame", retry_num=1)
        await bot.idle()
        assert bot.answer("C1", ROOT) == "Now I know you."
    assert len(aiml.requests) == 1


async def test_two_replicas_refusing_the_same_person_at_once_send_one_note(db_url, slack, aiml):
    slack.users["U7"] = FakeUser(real_name="Visitor", is_restricted=True)
    settings = make_settings(db_url, slack, aiml)
    async with running_bot(settings, slack, aiml) as one, running_bot(settings, slack, aiml) as two:
        await asyncio.gather(
            *(
                bot.send(mention(f"try {n}", f"170000000{n}.000000", user="U7"))
                for n, bot in enumerate((one, two, one, two), start=1)
            )
        )
        await one.idle()
        await two.idle()
        assert await ignored(one, "guest") + await ignored(two, "guest") == 4
    assert aiml.requests == [] and len(slack.ephemerals) == 1
