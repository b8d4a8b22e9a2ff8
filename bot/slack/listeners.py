"""Bolt listeners: plain functions that hand Slack's events to the edge (bot.slack.handler).

As in bolt-python, listeners are module-level and receive what they need as arguments; the edge
reaches them through Bolt's per-request `context`, where a global middleware puts it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.events import event_type_label
from bot.slack.handler import SlackEdge

EDGE = "glm_edge"  # the context key the edge is found under


def edge_of(context: AsyncBoltContext) -> SlackEdge:
    edge = context[EDGE]
    assert isinstance(edge, SlackEdge)
    return edge


async def on_message(body: dict[str, Any], client: AsyncWebClient, context: AsyncBoltContext) -> None:
    await edge_of(context).handle(body, client, context.bot_user_id)


async def on_other_event(body: dict[str, Any], context: AsyncBoltContext) -> None:
    # Acknowledged (so Slack does not retry) and counted, nothing else.
    edge = edge_of(context)
    edge.count_received(event_type_label(body))
    edge.turns.ignored("unsupported_type")


class AttachToContext(AsyncMiddleware):
    """Puts one of the process's objects into the context of the requests it runs for, so listeners
    can stay plain module-level functions (as in bolt-python) rather than closures."""

    def __init__(self, key: str, value: object) -> None:
        self._key, self._value = key, value

    async def async_process(
        self,
        *,
        req: AsyncBoltRequest,
        resp: BoltResponse,  # noqa: ARG002
        next: Callable[[], Awaitable[BoltResponse]],  # Bolt passes it by this name
    ) -> BoltResponse | None:
        req.context[self._key] = self._value
        return await next()


def register_listeners(app: AsyncApp, edge: SlackEdge) -> None:
    app.middleware(AttachToContext(EDGE, edge))
    app.event("app_mention")(on_message)
    app.event("message")(on_message)
    app.event(re.compile(".*"))(on_other_event)
