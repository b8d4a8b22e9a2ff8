"""Slack's agent sessions: `processing` while an answer streams (Slack then shows its own stop
control, which sends `agent_session_stopped`), `active` once it ended.

slack_sdk has no methods for `agents.sessions.*` yet, so the calls go through `api_call` with a JSON
body (docs.slack.dev/reference/methods/agents.sessions.setStatus). They are a courtesy, never worth
delaying or failing an answer for: a workspace that rate-limits them is left alone for the
Retry-After, and one that refuses them (the app is not declared an agent, a missing scope) for a
while, so a busy workspace costs a few refused calls rather than two per answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason

log = logging.getLogger(__name__)

SessionStatus = Literal["active", "processing", "suspended", "closed"]
REFUSED_PAUSE = 600.0  # seconds a workspace that refused the method is left alone


class AgentSessions:
    """`agents.sessions.setStatus` per workspace, skipped while that workspace said to wait."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._quiet_until: dict[str, float] = {}

    async def set_status(
        self, client: AsyncWebClient, team: str, channel: str, thread_ts: str, status: SessionStatus
    ) -> bool:
        """Set the thread's session status; False when skipped or Slack did not take it."""
        if self._quiet_until.get(team, 0.0) > self._clock():
            return False
        try:
            await client.api_call(
                "agents.sessions.setStatus",
                json={"channel_id": channel, "thread_ts": thread_ts, "status": status},
            )
        except SlackApiError as exc:
            self._quiet_until[team] = self._clock() + _pause(exc)
            log.info("agents.sessions.setStatus refused (%s)", call_error_reason(exc))
            return False
        except SLACK_CALL_ERRORS as exc:  # Slack unreachable this once: the next call tries again
            log.info("agents.sessions.setStatus failed (%s)", call_error_reason(exc))
            return False
        return True


def _pause(exc: SlackApiError) -> float:
    if exc.response.status_code == 429:
        try:
            return max(1.0, float(exc.response.headers.get("Retry-After", 1)))
        except ValueError:
            return 1.0
    if exc.response.status_code >= 500:
        return 0.0
    return REFUSED_PAUSE
