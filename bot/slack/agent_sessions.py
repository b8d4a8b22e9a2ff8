"""Slack's agent sessions: `processing` while an answer streams (Slack then shows its own stop
control, which sends `agent_session_stopped`), `active` once it ended.

slack_sdk has no methods for `agents.sessions.*` yet, so the calls go through `api_call` with a JSON
body (docs.slack.dev/reference/methods/agents.sessions.setStatus). Opening a session is a courtesy,
never worth delaying an answer or a 429 for: it is skipped when the workspace's budget for the method
(Tier 3, about 50 a minute, kept here per process) is spent, while Slack asked to wait, and for a
while after Slack refused it (the app is not declared an agent, a missing scope). Closing a session
this process opened is not optional (a session left `processing` keeps its spinner), so that call
waits for the budget and out a Retry-After, and opening leaves the tokens to waiting closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason

log = logging.getLogger(__name__)

SessionStatus = Literal["active", "processing", "suspended", "closed"]
# Slack's Tier 3 is 50 a minute; a tenth less, since Slack counts a call when it arrives and this
# budget when it leaves, a latency apart.
PER_MINUTE = 45.0
BURST = 5
REFUSED_PAUSE = 600.0  # seconds a workspace that refused the method is left alone
MAX_WAIT = 60.0  # the longest a closing call waits for the budget or a Retry-After


@dataclass
class _Budget:
    tokens: float
    updated: float
    quiet_until: float = 0.0  # Slack said to wait (429), or refused the method
    closing: int = 0  # closing calls waiting: opening ones leave them the tokens
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one closing call at a time


class AgentSessions:
    """`agents.sessions.setStatus` per workspace, within a local budget and Slack's Retry-After."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, per_minute: float = PER_MINUTE, burst: int = BURST
    ) -> None:
        self._clock = clock
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._budgets: dict[str, _Budget] = {}

    async def open(self, client: AsyncWebClient, team: str, channel: str, thread_ts: str) -> bool:
        """Mark the thread's session `processing` if the budget allows; True when Slack took it."""
        budget = self._budget(team)
        if budget.quiet_until > self._clock() or budget.tokens < 1.0 + budget.closing:
            return False
        budget.tokens -= 1.0
        return await self._call(client, budget, channel, thread_ts, "processing") == "ok"

    async def close(self, client: AsyncWebClient, team: str, channel: str, thread_ts: str) -> bool:
        """Move the thread's session out of `processing` (`active`), waiting for the budget and out
        a Retry-After for up to a minute; one call at a time, so a 429 is not met by a herd."""
        budget = self._budget(team)
        budget.closing += 1
        try:
            async with budget.lock:
                deadline = self._clock() + MAX_WAIT
                while True:
                    budget = self._budget(team)
                    now = self._clock()
                    wait = max(budget.quiet_until - now, (1.0 - budget.tokens) / self._rate, 0.0)
                    if now + wait > deadline:
                        return False  # refused, or Slack is very busy: it clears the status itself
                    if wait > 0:
                        await asyncio.sleep(wait)
                        continue
                    budget.tokens -= 1.0
                    outcome = await self._call(client, budget, channel, thread_ts, "active")
                    if outcome != "wait":
                        return outcome == "ok"
        finally:
            budget.closing -= 1

    def _budget(self, team: str) -> _Budget:
        now = self._clock()
        budget = self._budgets.setdefault(team, _Budget(self._burst, now))
        budget.tokens = min(self._burst, budget.tokens + (now - budget.updated) * self._rate)
        budget.updated = now
        return budget

    async def _call(
        self, client: AsyncWebClient, budget: _Budget, channel: str, thread_ts: str, status: SessionStatus
    ) -> Literal["ok", "wait", "failed"]:
        try:
            await client.api_call(
                "agents.sessions.setStatus",
                json={"channel_id": channel, "thread_ts": thread_ts, "status": status},
            )
        except SlackApiError as exc:
            pause = _pause(exc)
            budget.quiet_until = max(budget.quiet_until, self._clock() + pause)
            log.info("agents.sessions.setStatus refused (%s)", call_error_reason(exc))
            return "wait" if exc.response.status_code == 429 else "failed"
        except SLACK_CALL_ERRORS as exc:  # Slack unreachable this once: the next call tries again
            log.info("agents.sessions.setStatus failed (%s)", call_error_reason(exc))
            return "failed"
        return "ok"


def _pause(exc: SlackApiError) -> float:
    if exc.response.status_code == 429:
        try:
            return max(1.0, float(exc.response.headers.get("Retry-After", 1)))
        except ValueError:
            return 1.0
    if exc.response.status_code >= 500:
        return 0.0
    return REFUSED_PAUSE
