"""The App Home tab: rendered with views.publish when a person opens it, and again for the admin who
changed a channel's settings.

Bolt runs only the first listener whose matchers pass: this one takes `app_home_opened` with
`tab == "home"` (the Messages tab is another listener's), so register it before the catch-all.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo

from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.settings_store import ChannelSettingsStore
from bot.slack.admin_access import AdminAccess
from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason
from bot.slack.home_blocks import AdminPage, ChartImage, HomePage, home_view
from bot.slack.home_chart import HomeChart
from bot.slack.people import UserDirectory
from bot.slack.usage_command import caller_zone
from bot.storage.db import UNAVAILABLE, error_reason
from bot.usage.chart import CHART_ALT, CHART_TITLE
from bot.usage.home import AlertFeed, Allowances, workspace_month
from bot.usage.personal import personal_usage

log = logging.getLogger(__name__)

# What views.publish answers for blocks it will not show (an image whose file is not ready or gone).
REFUSED_VIEW = frozenset({"invalid_arguments", "invalid_blocks"})


async def is_home_tab(event: dict[str, Any]) -> bool:
    """Bolt matcher: the Home tab was opened (not the Messages tab)."""
    return event.get("tab") == "home"


class AppHome:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        access: AdminAccess,
        people: UserDirectory,
        channels: ChannelSettingsStore,
        zone: ZoneInfo,
        *,
        allowances: Allowances | None = None,
        alerts: AlertFeed | None = None,
        chart: HomeChart | None = None,
    ) -> None:
        """`zone`: the workspace's days and months (USAGE_DIGEST_TZ), and a person's when Slack has none.
        `allowances` and `alerts`: the quotas' remaining credits and open alerts; `chart`: the usage
        chart for admins; None leaves each out."""
        self._sessions, self._access, self._people = sessions, access, people
        self._channels, self._zone = channels, zone
        self.allowances, self.alerts, self.chart = allowances, alerts, chart

    async def on_home_opened(
        self, event: dict[str, Any], client: AsyncWebClient, context: AsyncBoltContext
    ) -> None:
        user_id, team_id = str(event.get("user", "")), str(context.team_id or "")
        if user_id:
            await self.publish(client, user_id, team_id)

    async def publish(self, client: AsyncWebClient, user_id: str, team_id: str) -> None:
        """Render the person's Home tab now; failures are logged, the tab keeps its last view."""
        try:
            page = await self.page(user_id, team_id)
        except UNAVAILABLE as exc:
            log.warning("App Home: database unavailable: %s", error_reason(exc), extra={"user_id": user_id})
            return
        page = await self._with_chart(page, client, team_id)
        error = await self._publish(client, user_id, page)
        chart = page.admin.chart if page.admin is not None else None
        if _refused_view(error) and chart is not None and self.chart is not None:
            # Slack refused the view with the image (the file not ready yet, or gone): text only.
            self.chart.refused(team_id, chart.file_id)
            assert page.admin is not None
            error = await self._publish(client, user_id, replace(page, admin=replace(page.admin, chart=None)))
        if error is not None:
            log.warning(
                "App Home: views.publish failed: %s", call_error_reason(error), extra={"user_id": user_id}
            )

    @staticmethod
    async def _publish(client: AsyncWebClient, user_id: str, page: HomePage) -> Exception | None:
        try:
            await client.views_publish(user_id=user_id, view=home_view(page))
        except SLACK_CALL_ERRORS as exc:
            return exc
        return None

    async def _with_chart(self, page: HomePage, client: AsyncWebClient, team_id: str) -> HomePage:
        """Admins' page with the day's chart when it could be uploaded (never raises)."""
        if page.admin is None or self.chart is None:
            return page
        file_id = await self.chart.file_id(client, team_id)
        if file_id is None:
            return page
        image = ChartImage(file_id, CHART_TITLE, CHART_ALT)
        return replace(page, admin=replace(page.admin, chart=image))

    async def page(self, user_id: str, team_id: str) -> HomePage:
        zone = await caller_zone(self._people, user_id, self._zone)
        admin = await self._access.is_admin(user_id, team_id)
        async with self._sessions() as session:
            usage = await personal_usage(session, user_id, zone)
            month = await workspace_month(session, self._zone) if admin else None
        allowances = None if self.allowances is None else await self.allowances.for_person(team_id, user_id)
        admin_page = None
        if month is not None:
            admin_page = AdminPage(
                month=month,
                budget=None if self.allowances is None else await self.allowances.for_workspace(team_id),
                alerts=None if self.alerts is None else await self.alerts.open_alerts(team_id),
                channels=await self._channels.configured_channels(team_id),
            )
        return HomePage(usage=usage, allowances=allowances, admin=admin_page)


def _refused_view(error: Exception | None) -> bool:
    """Slack refused the view's content (not the call: a rate limit or an outage is no refusal)."""
    return isinstance(error, SlackApiError) and error.response.get("error") in REFUSED_VIEW


def register_app_home(app: AsyncApp, home: AppHome) -> None:
    app.event("app_home_opened", matchers=[is_home_tab])(home.on_home_opened)
