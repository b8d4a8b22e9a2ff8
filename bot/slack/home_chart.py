"""The usage chart on admins' App Home: drawn and uploaded once a day per workspace, shown by file id.

An image block takes a file the app uploaded (`slack_file: {"id": ...}`; Block Kit's Slack file
object: "the user posting these blocks must have access to this file", and the app that uploaded it
has). The file is uploaded with files_upload_v2 and no channel, so it is shared nowhere: it exists
for the Home tab only. The chart ends yesterday, as the digest's does, so one upload serves the day.
The file id is kept in memory: a restart (or another replica) uploads its own once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import date, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.slack.call_errors import call_error_reason
from bot.usage.chart import CHART_ALT, CHART_TITLE, chart_png
from bot.usage.limits import local_today

log = logging.getLogger(__name__)

RETRY_AFTER = 600.0  # seconds before a failed draw or upload is tried again (not on every open)
# Slack processes an upload for a moment before blocks may show it (slackapi/python-slack-sdk#1521):
# a refusal in that time keeps the file for the next open; a later one drops it.
PROCESSING_GRACE = 60.0


class ChartEvents(Protocol):
    """Counted by the operator's metrics (bot.metrics.Metrics.home_chart)."""

    def home_chart(self, outcome: str) -> None: ...


class HomeChart:
    """The day's chart file per workspace; `file_id` never raises (the Home tab shows text without it)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        zone: ZoneInfo,
        *,
        monthly_budget: int | None = None,
        events: ChartEvents | None = None,
        retry_after: float = RETRY_AFTER,
        today: Callable[[], date] | None = None,
    ) -> None:
        """`zone`: the digest's days (USAGE_DIGEST_TZ); `monthly_budget`: the workspace's, drawn as its
        daily pace; `today`: the local date (tests move it)."""
        self._sessions, self._zone, self._budget = sessions, zone, monthly_budget
        self._events, self._retry_after = events, retry_after
        self._today = today or (lambda: local_today(zone))
        # team -> (the chart's last day, file id, time.monotonic() of the upload)
        self._files: dict[str, tuple[date, str, float]] = {}
        self._failed: dict[str, float] = {}  # team -> time.monotonic() of the last failure
        self._locks: dict[str, asyncio.Lock] = {}

    async def file_id(self, client: AsyncWebClient, team_id: str) -> str | None:
        """The id of the chart ending yesterday, uploaded now if this process has none for the day."""
        last_day = self._today() - timedelta(days=1)
        lock = self._locks.setdefault(team_id, asyncio.Lock())
        async with lock:  # admins opening the tab together wait for one upload
            known = self._files.get(team_id)
            if known is not None and known[0] == last_day:
                return known[1]
            failed = self._failed.get(team_id)
            if failed is not None and time.monotonic() - failed < self._retry_after:
                return None
            file_id = await self._upload(client, team_id, last_day)
            if file_id is None:
                self._failed[team_id] = time.monotonic()
                return None
            self._failed.pop(team_id, None)
            self._files[team_id] = (last_day, file_id, time.monotonic())
            return file_id

    def refused(self, team_id: str, file_id: str) -> None:
        """Slack would not show the file: still being processed (kept), or gone (uploaded again on an
        open after RETRY_AFTER)."""
        log.warning("App Home chart refused by Slack; the tab is published without it")
        self.count("refused")
        known = self._files.get(team_id)
        if known is not None and known[1] == file_id and time.monotonic() - known[2] > PROCESSING_GRACE:
            del self._files[team_id]
            self._failed[team_id] = time.monotonic()

    def count(self, outcome: str) -> None:
        if self._events is not None:
            self._events.home_chart(outcome)

    async def _upload(self, client: AsyncWebClient, team_id: str, last_day: date) -> str | None:
        try:
            png = await chart_png(
                self._sessions, last_day, self._zone, team_id=team_id, monthly_budget=self._budget
            )
        except Exception as exc:  # a chart is an extra: the Home tab stands without it
            log.warning("App Home chart not drawn: %s", type(exc).__name__, extra={"team_id": team_id})
            self.count("draw_failed")
            return None
        try:
            response = await client.files_upload_v2(
                file=png, filename=f"usage-{last_day.isoformat()}.png", title=CHART_TITLE, alt_txt=CHART_ALT
            )
            file_id = str(response["files"][0]["id"])
        except Exception as exc:  # any failure: Slack's answer, the network, an unexpected shape
            log.warning("App Home chart not uploaded: %s", call_error_reason(exc), extra={"team_id": team_id})
            self.count("upload_failed")
            return None
        log.info("App Home chart uploaded", extra={"team_id": team_id, "file_id": file_id})
        self.count("uploaded")
        return file_id
