"""Slack's agent sessions: `processing` while an answer streams (Slack then shows its own stop
control, which sends `agent_session_stopped`), `active` once it ended.

slack_sdk has no methods for `agents.sessions.*` yet, so the calls go through `api_call` with a JSON
body (docs.slack.dev/reference/methods/agents.sessions.setStatus). The calls draw on the workspace's
budget for the method (bot.slack.edit_budget, Tier 3; shared by every replica on PostgreSQL), so N
replicas open no more sessions a minute than one. Opening a session is a courtesy, never worth
delaying an answer or a 429 for: it is skipped when the budget has no call free now, while Slack asked
to wait, and for a while after Slack refused it (the app is not declared an agent, a missing scope).
Closing a session this process opened is not optional (a session left `processing` keeps its
spinner), so that call waits, as a final call that goes before any other, for up to a minute.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Literal

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason
from bot.slack.edit_budget import SESSION_STATUS, EditBudget, EditBudgets

log = logging.getLogger(__name__)

SessionStatus = Literal["active", "processing", "suspended", "closed"]
REFUSED_PAUSE = 600.0  # seconds a workspace that refused the method is left alone
MAX_WAIT = 60.0  # the longest a closing call waits for the budget or a Retry-After


class AgentSessions:
    """`agents.sessions.setStatus` per workspace, within its Slack budget and Slack's Retry-After."""

    def __init__(self, budgets: EditBudgets, clock: Callable[[], float] = time.monotonic) -> None:
        self._budgets = budgets
        self._clock = clock
        self._refused_until: dict[str, float] = {}  # per workspace: Slack refused the method

    async def open(self, client: AsyncWebClient, team: str, channel: str, thread_ts: str) -> bool:
        """Mark the thread's session `processing` if a call is free now; True when Slack took it."""
        budget = self._budgets.for_team(team, SESSION_STATUS)
        if self._refused(team) or budget.expected_wait() > 0:
            return False
        key = ("open", channel, thread_ts)
        try:
            await budget.acquire(key)
            return await self._call(client, budget, team, channel, thread_ts, "processing") == "ok"
        finally:
            budget.forget(key)

    async def close(self, client: AsyncWebClient, team: str, channel: str, thread_ts: str) -> bool:
        """Move the thread's session out of `processing` (`active`), waiting for the budget and out
        a Retry-After for up to a minute."""
        budget = self._budgets.for_team(team, SESSION_STATUS)
        key = ("close", channel, thread_ts)
        deadline = self._clock() + MAX_WAIT
        try:
            while not self._refused(team):
                left = deadline - self._clock()
                if budget.expected_wait() > left:
                    return False  # Slack is very busy or asked to wait long: it clears the status itself
                try:
                    await asyncio.wait_for(budget.acquire(key, final=True), left)
                except TimeoutError:
                    return False
                outcome = await self._call(client, budget, team, channel, thread_ts, "active")
                if outcome != "wait":
                    return outcome == "ok"
            return False
        finally:
            budget.forget(key)

    def _refused(self, team: str) -> bool:
        return self._refused_until.get(team, 0.0) > self._clock()

    async def _call(
        self,
        client: AsyncWebClient,
        budget: EditBudget,
        team: str,
        channel: str,
        thread_ts: str,
        status: SessionStatus,
    ) -> Literal["ok", "wait", "failed"]:
        try:
            await client.api_call(
                "agents.sessions.setStatus",
                json={"channel_id": channel, "thread_ts": thread_ts, "status": status},
            )
        except SlackApiError as exc:
            log.info("agents.sessions.setStatus refused (%s)", call_error_reason(exc))
            if exc.response.status_code == 429:
                budget.penalize(_retry_after(exc))
                return "wait"
            if exc.response.status_code < 500:
                self._refused_until[team] = self._clock() + REFUSED_PAUSE
            return "failed"
        except SLACK_CALL_ERRORS as exc:  # Slack unreachable this once: the next call tries again
            log.info("agents.sessions.setStatus failed (%s)", call_error_reason(exc))
            return "failed"
        budget.reward()
        return "ok"


def _retry_after(exc: SlackApiError) -> float:
    try:
        return max(1.0, float(exc.response.headers.get("Retry-After", 1)))
    except (TypeError, ValueError):
        return 1.0
