"""Bolt listeners: thin adapters from Slack's events to SlackTurns."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from bot.metrics import Metrics
from bot.slack.events import event_type_label
from bot.slack.handler import SlackTurns


def register_listeners(app: AsyncApp, turns: SlackTurns, metrics: Metrics) -> None:
    async def on_message(body: dict[str, Any], client: AsyncWebClient, context: AsyncBoltContext) -> None:
        await turns.handle(body, client, context.bot_user_id)

    async def on_other_event(body: dict[str, Any]) -> None:
        # Acknowledged (so Slack does not retry) and counted, nothing else.
        metrics.events_received.labels(event_type_label(body)).inc()
        metrics.events_ignored.labels("unsupported_type").inc()

    app.event("app_mention")(on_message)
    app.event("message")(on_message)
    app.event(re.compile(".*"))(on_other_event)
