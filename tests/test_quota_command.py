"""`/glm quota` and `/glm budget`: admins set limits that bind the next turn; inputs are validated."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from bot.conversation.person import Person
from bot.conversation.quota import Quotas
from bot.slack.quota_command import NOT_ADMIN, QuotaChange, QuotaCommands, parse_amount
from bot.usage.limits import DefaultLimits, Period, Scope
from tests.fakes.aimlapi import Reply
from tests.fakes.response_url import ResponseUrl
from tests.harness import eventually, make_settings, mention, running_bot

ADMIN = Person("UADMIN", "T1", is_admin=True)
MEMBER = Person("U2", "T1")


def commands(sessions, **defaults: int) -> tuple[QuotaCommands, list[QuotaChange]]:
    changes: list[QuotaChange] = []

    async def audit(change: QuotaChange) -> None:
        changes.append(change)

    stage = Quotas(sessions, DefaultLimits(**defaults), ZoneInfo("UTC"))
    return QuotaCommands(sessions, stage, audit=audit), changes


async def test_an_admin_sets_a_persons_daily_quota_and_the_change_is_audited(sessions):
    quota, changes = commands(sessions, user_day=100_000)
    reply = await quota.handle_quota("<@U1|ada> 50000/day", ADMIN, team_id="T1")
    assert reply == "<@U1>'s daily limit is now 50,000 credits; it was 100,000 credits (the default)."

    again = await quota.handle_quota("U1 75k/day", ADMIN, team_id="T1")
    assert again == "<@U1>'s daily limit is now 75,000 credits; it was 50,000 credits."
    back = await quota.handle_quota("<@U1> default/day", ADMIN, team_id="T1")
    assert back == "<@U1>'s daily limit is now 100,000 credits (the default); it was 75,000 credits."

    assert [(c.actor_id, c.scope, c.subject_id, c.period, c.before, c.after) for c in changes] == [
        ("UADMIN", Scope.USER, "U1", Period.DAY, 100_000, 50_000),
        ("UADMIN", Scope.USER, "U1", Period.DAY, 50_000, 75_000),
        ("UADMIN", Scope.USER, "U1", Period.DAY, 75_000, 100_000),
    ]


async def test_channel_quotas_and_the_workspace_budget_are_set_the_same_way(sessions):
    quota, changes = commands(sessions)
    assert "daily limit is now 100,000 credits" in await quota.handle_quota(
        "<#C9|general> 100000/day", ADMIN, team_id="T1"
    )
    assert await quota.handle_budget("5,000,000/month", ADMIN, team_id="T1") == (
        "The workspace's monthly budget is now 5,000,000 credits; it was no limit (the default)."
    )
    assert [(c.scope, c.subject_id) for c in changes] == [(Scope.CHANNEL, "C9"), (Scope.WORKSPACE, "T1")]


async def test_someone_who_is_not_an_admin_cannot_change_limits(sessions):
    quota, changes = commands(sessions)
    assert await quota.handle_quota("<@U2> unlimited/day", MEMBER, team_id="T1") == NOT_ADMIN
    assert await quota.handle_budget("1/month", MEMBER, team_id="T1") == NOT_ADMIN
    assert changes == []


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("@ada 5/day", "autocomplete"),
        ("<@U1> 50000", "not an amount"),
        ("<@U1> 50000/week", "not an amount"),
        ("<@U1> -5/day", "not an amount"),
        ("<@U1> 1.5/day", "whole numbers"),
        ("<@U1> 5000000000000/day", "typo"),
        ("everyone 5/day", "not a person or a channel"),
        ("", "Usage"),
    ],
)
async def test_bad_quota_commands_get_a_clear_error_and_change_nothing(sessions, text, says):
    quota, changes = commands(sessions)
    assert says in await quota.handle_quota(text, ADMIN, team_id="T1")
    assert changes == []


def test_amounts_accept_thousands_separators_and_k_and_m_suffixes():
    assert parse_amount("1,500,000/month").credits == 1_500_000
    assert parse_amount("2.5m/month").credits == 2_500_000
    assert parse_amount("50k/day").credits == 50_000
    assert parse_amount("unlimited/day").credits is None


async def test_showing_a_persons_quota_says_what_is_left(sessions):
    quota, _ = commands(sessions, user_day=10_000)
    shown = await quota.handle_quota("<@U1>", ADMIN, team_id="T1")
    assert "<@U1>'s daily limit: 10,000 credits, 10,000 left" in shown
    assert "<@U1>'s monthly limit: no limit" in shown


async def test_a_quota_set_with_the_glm_command_binds_the_persons_next_turn_and_is_audited(db_url, fakes):
    slack, aiml = fakes
    receiver = ResponseUrl()
    await receiver.start()
    settings = make_settings(db_url, slack, aiml, admin_user_ids="UADMIN")
    try:
        async with running_bot(settings, slack, aiml) as bot:
            aiml.enqueue(Reply(content="One.", credits_used=3_000))
            await bot.send(mention("first", "100.000001"))
            await bot.idle()
            await bot.command("/glm", "quota <@U1|ada> 2000/day", user="UADMIN", response_url=receiver.url)
            set_answer = await receiver.next_answer()
            await bot.command("/glm", "quota <@U1> 1/day", user="U1", response_url=receiver.url)
            await eventually(lambda: len(receiver.received) == 2)

            await bot.send(mention("second", "100.000002"))
            await bot.idle()
            await bot.command("/glm", "audit", user="UADMIN", response_url=receiver.url)
            await eventually(lambda: len(receiver.received) == 3)
    finally:
        await receiver.stop()
    assert set_answer["text"] == "<@U1>'s daily limit is now 2,000 credits; it was no limit (the default)."
    assert "admins" in receiver.received[1]["text"]  # U1 may not raise their own limit
    assert len(aiml.chat_requests) == 1
    last = bot.replies("C1", "100.000002")[-1]
    assert "daily AI limit (2,000 credits)" in last.text + last.context
    audit = receiver.received[2]["text"]
    assert "<@UADMIN> changed quota of <@U1>" in audit and "2,000" in audit
