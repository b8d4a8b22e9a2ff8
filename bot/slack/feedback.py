"""👍/👎 under every final answer: the buttons' block, and storing a press (one vote per person per
answer; pressing again changes it)."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt import BoltResponse
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.models.blocks import ContextActionsBlock, FeedbackButtonObject, FeedbackButtonsElement
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.metrics import Metrics
from bot.slack.events import SLACK_ID, SLACK_TS
from bot.storage.db import UNAVAILABLE, error_reason
from bot.storage.feedback import Vote, VoteCast, answered_at, record_vote

log = logging.getLogger(__name__)

ACTION_ID = "answer_feedback"
# Slack's ids and timestamps, bounded to the columns they are stored in (as bot.slack.events checks).


def feedback_block() -> dict[str, Any]:
    """The `context_actions` block with the feedback buttons, ending every final answer."""
    block = ContextActionsBlock(
        elements=[
            FeedbackButtonsElement(
                action_id=ACTION_ID,
                positive_button=FeedbackButtonObject(
                    text="Good answer", accessibility_label="This answer was helpful", value=Vote.UP.value
                ),
                negative_button=FeedbackButtonObject(
                    text="Bad answer",
                    accessibility_label="This answer was not helpful",
                    value=Vote.DOWN.value,
                ),
            )
        ]
    )
    return block.to_dict()


def _field(body: dict[str, Any], part: str, key: str) -> str | None:
    """`body[part][key]` when it is text."""
    node = body.get(part)
    value = node.get(key) if isinstance(node, dict) else None
    return value if isinstance(value, str) else None


def _valid(value: str | None, pattern: re.Pattern[str]) -> str | None:
    return value if value is not None and pattern.fullmatch(value) else None


def vote_from(body: dict[str, Any]) -> VoteCast | None:
    """The vote in a `block_actions` press of our buttons; None when the payload is not one."""
    actions = body.get("actions")
    action = actions[0] if isinstance(actions, list) and actions and isinstance(actions[0], dict) else {}
    value = action.get("value")
    channel = _valid(_field(body, "container", "channel_id") or _field(body, "channel", "id"), SLACK_ID)
    ts = _valid(_field(body, "container", "message_ts") or _field(body, "message", "ts"), SLACK_TS)
    user = _valid(_field(body, "user", "id"), SLACK_ID)
    team = _valid(_field(body, "team", "id") or _field(body, "user", "team_id"), SLACK_ID)
    if value not in (Vote.UP.value, Vote.DOWN.value) or channel is None or ts is None or user is None:
        return None
    try:
        answered_at(ts)  # stored with the vote: a ts no clock can show is no answer of ours
    except (ValueError, OverflowError, OSError):
        return None
    return VoteCast(team, channel, ts, user, Vote(value))


class FeedbackVotes:
    """Stores presses of the feedback buttons; Bolt calls `on_press` with the arguments it names."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], metrics: Metrics) -> None:
        self._sessions, self._metrics = sessions, metrics

    async def on_press(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()  # first: Slack wants the answer within 3 s, whatever the database does
        vote = vote_from(body)
        if vote is None:
            log.warning("ignored a feedback press that was not one of ours")
            self._metrics.events_ignored.labels("malformed").inc()
            return
        try:
            async with self._sessions.begin() as session:
                await record_vote(session, vote)
        except UNAVAILABLE as exc:
            log.warning("could not store a feedback vote: %s", error_reason(exc))
            return
        self._metrics.feedback.labels(vote.value.value).inc()


async def refuse_malformed_actions(
    body: dict[str, Any], next_: Callable[[], Awaitable[None]]
) -> BoltResponse | None:
    """A `block_actions` payload whose `actions` is not a list of actions gets a 400: Bolt's own action
    matchers index into it and would answer 500."""
    actions = body.get("actions")
    if body.get("type") == "block_actions" and not (
        isinstance(actions, list)
        and actions
        and all(isinstance(a, dict) and isinstance(a.get("action_id"), str) for a in actions)
    ):
        return BoltResponse(status=400, body="malformed block_actions payload")
    await next_()
    return None


def register_feedback(app: AsyncApp, sessions: async_sessionmaker[AsyncSession], metrics: Metrics) -> None:
    app.middleware(refuse_malformed_actions)
    app.action(ACTION_ID)(FeedbackVotes(sessions, metrics).on_press)
