"""The thread's status line (bot.slack.status) against the fake Slack: renewed while the model only
thinks, skipped when its budget is spent, taken down on failure."""

from __future__ import annotations

import asyncio

from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.edit_budget import SET_STATUS, EditBudgets
from bot.slack.status import REFRESH_SECONDS, THINKING, ThinkingStatus
from tests.fakes.slack_api import FakeSlackApi


def _status(
    slack: FakeSlackApi, budgets: EditBudgets, thread: str = "1.000001", *, refresh: float = REFRESH_SECONDS
) -> ThinkingStatus:
    client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url)
    return ThinkingStatus(client, budgets.for_team("T1", SET_STATUS), "C1", thread, refresh=refresh)


async def test_the_status_is_renewed_while_the_model_still_thinks(slack: FakeSlackApi) -> None:
    status = _status(slack, EditBudgets(), refresh=0.3)
    assert await status.show()
    await status.keep()  # too soon: Slack still shows it
    assert len(slack.statuses) == 1
    await asyncio.sleep(0.35)
    await status.keep()
    assert [s[2] for s in slack.statuses] == [THINKING, THINKING]


async def test_a_status_whose_budget_is_spent_is_skipped_not_waited_for(slack: FakeSlackApi) -> None:
    budgets = EditBudgets()
    budget = budgets.for_team("T1", SET_STATUS)
    others = [asyncio.create_task(budget.acquire(f"other{i}")) for i in range(budget.burst + 20)]
    await asyncio.sleep(0)  # they took the burst and queue for more
    started = asyncio.get_running_loop().time()
    assert not await _status(slack, budgets).show()
    assert asyncio.get_running_loop().time() - started < 0.1
    assert slack.statuses == []
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


async def test_a_status_whose_answer_was_posted_first_is_never_sent(slack: FakeSlackApi) -> None:
    status = _status(slack, EditBudgets())
    status.cleared_by_post()  # the model was faster than the status: its first text is out
    assert not await status.show()
    assert slack.statuses == []


async def test_a_failed_reply_takes_its_status_down_and_a_posted_one_needs_no_clearing(
    slack: FakeSlackApi,
) -> None:
    budgets = EditBudgets()
    failed, answered = _status(slack, budgets, "1.000001"), _status(slack, budgets, "2.000001")
    assert await failed.show() and await answered.show()
    answered.cleared_by_post()
    await failed.clear()
    await answered.clear()
    assert slack.statuses == [
        ("C1", "1.000001", THINKING),
        ("C1", "2.000001", THINKING),
        ("C1", "1.000001", ""),
    ]
    assert slack.status("C1", "1.000001") == ""


async def test_the_status_names_the_running_tools_and_stays_quiet_once_the_answer_is_posted(
    slack: FakeSlackApi,
) -> None:
    from bot.conversation.ports import ToolStep
    from bot.slack.status import tools_status

    status = _status(slack, EditBudgets())
    running = [ToolStep("c1", "fetch_url", "in_progress"), ToolStep("c2", "fetch_url", "in_progress")]
    status.say(tools_status(running))  # the model called tools before the status was up
    assert await status.show()
    await status.settled()
    status.say(tools_status([ToolStep("c1", "fetch_url", "complete", "example.org")]))
    await status.settled()
    status.cleared_by_post()
    status.say(tools_status(running))
    await status.settled()
    assert [s[2] for s in slack.statuses] == ["is running fetch_url…", THINKING]
