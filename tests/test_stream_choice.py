"""The per-reply choice of how an answer streams (`choose_way`), and the budgets it reads."""

from __future__ import annotations

import pytest

from bot.slack.edit_budget import APPEND_STREAM, SET_STATUS, START_STREAM, STOP_STREAM, UPDATE, EditBudgets
from bot.slack.streaming import BudgetState, Way, choose_way
from tests.test_edit_budget import FakeClock

ROOM = BudgetState(start_wait=0.0, stop_wait=0.0)


def test_auto_starts_a_native_stream_when_its_start_and_stop_have_room() -> None:
    assert choose_way("auto", ROOM) is Way.NATIVE


def test_auto_shows_the_first_text_as_a_new_message_when_a_start_would_wait() -> None:
    assert choose_way("auto", BudgetState(start_wait=3.0, stop_wait=0.0)) is Way.MESSAGE


def test_auto_starts_no_stream_that_could_not_be_stopped_promptly() -> None:
    assert choose_way("auto", BudgetState(start_wait=0.0, stop_wait=45.0)) is Way.MESSAGE


@pytest.mark.parametrize("state", [ROOM, BudgetState(60.0, 60.0)])
def test_the_fixed_modes_ignore_the_budgets(state: BudgetState) -> None:
    assert choose_way("native", state) is Way.NATIVE
    assert choose_way("edits", state) is Way.MESSAGE


def test_each_method_of_each_workspace_has_its_own_budget() -> None:
    budgets = EditBudgets(45.0, 5, clock=FakeClock())
    methods = (UPDATE, START_STREAM, APPEND_STREAM, STOP_STREAM, SET_STATUS)
    made = {(team, m): budgets.for_team(team, m) for team in ("T1", "T2") for m in methods}
    assert len({id(b) for b in made.values()}) == 10
    assert budgets.for_team("T1") is made["T1", UPDATE]
    assert made["T1", START_STREAM].rate_per_minute < made["T1", UPDATE].rate_per_minute
    assert made["T1", APPEND_STREAM].rate_per_minute > made["T1", UPDATE].rate_per_minute
    assert set(budgets.by_team()) == {"T1", "T2"}


async def test_a_start_budget_spent_on_its_burst_makes_the_next_start_wait() -> None:
    clock = FakeClock()
    start = EditBudgets(clock=clock, sleep=clock.sleep).for_team("T1", START_STREAM)
    assert start.expected_wait() == 0.0
    for i in range(start.burst):
        await start.acquire(f"s{i}")
    assert start.expected_wait() == pytest.approx(60.0 / start.rate_per_minute, rel=0.01)
    assert start.expected_wait(extra=2) == pytest.approx(3 * 60.0 / start.rate_per_minute, rel=0.01)


def test_a_429_blocks_the_method_for_its_retry_after() -> None:
    clock = FakeClock()
    stop = EditBudgets(clock=clock).for_team("T1", STOP_STREAM)
    stop.penalize(7.0)
    assert stop.available() == 0.0
    assert stop.expected_wait() == pytest.approx(7.0)
