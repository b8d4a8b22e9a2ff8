"""Agent sessions within Slack's limits: opening is skipped when the budget is spent, closing is not."""

from __future__ import annotations

import asyncio

from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.agent_sessions import AgentSessions
from bot.slack.edit_budget import SESSION_STATUS, EditBudgets, MethodRate
from tests.fakes.slack_api import FakeSlackApi, RateLimit

# Ten times Slack's Tier 3, so the test waits tenths of seconds for tokens rather than seconds.
FAST = RateLimit(500, burst=5)


async def test_many_answers_at_once_open_only_the_sessions_the_budget_allows_and_close_each_of_them():
    async with FakeSlackApi() as slack:
        slack.limits["agents.sessions.setStatus"] = FAST
        client = AsyncWebClient(base_url=slack.api_url, token="xoxb-test")
        rate = MethodRate(FAST.per_minute * 0.9, FAST.burst)  # a tenth under Slack's, as the default
        sessions = AgentSessions(EditBudgets(methods={SESSION_STATUS: rate}))
        threads = [f"{100 + i}.000001" for i in range(20)]

        opened = await asyncio.gather(*(sessions.open(client, "T1", "C1", t) for t in threads))
        open_threads = [t for t, ok in zip(threads, opened, strict=True) if ok]
        # Closing competes with more answers starting meanwhile: the closes get the tokens.
        later = [f"{200 + i}.000001" for i in range(10)]
        closed, _ = await asyncio.gather(
            asyncio.gather(*(sessions.close(client, "T1", "C1", t) for t in open_threads)),
            asyncio.gather(*(sessions.open(client, "T1", "C1", t) for t in later)),
        )

    assert len(open_threads) == FAST.burst
    assert all(closed)
    # Without the budget 15 of the 20 openings would be 429s. One closing call may be: Slack's bucket
    # starts with the first call's arrival, a connection set-up after this budget's.
    assert slack.count_429s <= 1
    statuses = {(thread, status) for _, thread, status in slack.session_statuses}
    assert {(t, "active") for t in open_threads} <= statuses


async def test_a_closing_call_waits_out_a_retry_after_and_lands():
    async with FakeSlackApi() as slack:
        client = AsyncWebClient(base_url=slack.api_url, token="xoxb-test")
        sessions = AgentSessions(EditBudgets())
        assert await sessions.open(client, "T1", "C1", "100.000001")
        slack.fail_next("agents.sessions.setStatus", error="ratelimited", status=429, retry_after=1)

        assert await sessions.close(client, "T1", "C1", "100.000001")
        # A wait longer than a closing call waits: it gives up; and while Slack asks to wait, no
        # session is opened.
        slack.fail_next("agents.sessions.setStatus", error="ratelimited", status=429, retry_after=90)
        assert not await sessions.close(client, "T1", "C1", "100.000001")
        assert not await sessions.open(client, "T1", "C1", "200.000001")

    assert [s for _, _, s in slack.session_statuses] == ["processing", "active"]
