"""Context for a mention in a thread the bot is new to: the root and the newest earlier messages.

`conversations.replies` pages oldest first and may return fewer messages a page than asked (15 for
commercially distributed apps), so the newest messages come last: page up to the mention (`latest`),
keep only the newest `limit`, and stop after a few pages. Every message is labelled with its author,
because the model otherwise cannot tell people and other bots apart.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.llm.types import ChatMessage
from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason
from bot.slack.events import readable, strip_bot_mention, user_ids_in
from bot.slack.people import UserDirectory
from bot.slack.retries import with_rate_limit_retries

log = logging.getLogger(__name__)

# conversations.replies is Tier 3 (about 50 a minute per workspace). Ten pages cost a fifth of a
# minute's budget, once per thread the bot joins, and reach 2,000 messages back for an internal app
# (200 a page) or 140 for a distributed one (15 a page, and 1 call a minute: its second page is
# refused, and the bot answers with the first).
PAGES = 10
BACKFILL_MAX_WAIT = 3.0  # seconds of one Retry-After a backfill sleeps through
PAGE_SIZE = 200
# Names of the backfilled messages' authors and of the people they mention, for the whole backfill.
NAME_LOOKUPS = 25


@dataclass(frozen=True)
class ThreadSpot:
    """Where the mention is: its thread, and its own ts (only messages before it are context)."""

    channel_id: str
    thread_ts: str
    before_ts: str
    reply_refs: frozenset[str] = frozenset()  # the bot's reply to this mention, never context


async def thread_context(
    client: AsyncWebClient,
    people: UserDirectory,
    spot: ThreadSpot,
    *,
    limit: int,
    bot_user_id: str | None,
) -> Sequence[ChatMessage]:
    """The root and the newest `limit` earlier messages, oldest first, labelled with their authors.

    When Slack limits or fails a page, the bot answers with what arrived.
    """
    if limit <= 0:
        return ()
    root, newest = await _read(client, spot, limit)
    messages = [m for m in (root, *newest) if m is not None]
    authors = [m["user"] for m in messages if _is_person(m)]
    mentioned = [uid for m in messages for uid in user_ids_in(m["text"])]
    known = await people.names([*authors, *mentioned], lookups=NAME_LOOKUPS)
    return [_as_chat(m, known, bot_user_id) for m in messages]


async def _read(
    client: AsyncWebClient, spot: ThreadSpot, limit: int
) -> tuple[dict[str, Any] | None, deque[dict[str, Any]]]:
    root: dict[str, Any] | None = None
    newest: deque[dict[str, Any]] = deque(maxlen=limit)
    seen: set[str] = set()
    before = _ts_key(spot.before_ts)
    cursor: str | None = None
    # Tier 3 allows short bursts: a brief Retry-After while paging is waited out; a long one (1 a
    # minute for distributed apps) means answering with what arrived.
    client = with_rate_limit_retries(client, max_retries=2, max_wait=BACKFILL_MAX_WAIT)
    try:
        for _ in range(PAGES):
            response = await client.conversations_replies(
                channel=spot.channel_id,
                ts=spot.thread_ts,
                latest=spot.before_ts,
                inclusive=False,
                limit=PAGE_SIZE,
                cursor=cursor,
            )
            for message in response.get("messages") or []:
                ts = message.get("ts") if isinstance(message, dict) else None
                if not isinstance(ts, str) or ts in seen or not isinstance(message.get("text"), str):
                    continue
                if ts in spot.reply_refs:
                    continue
                seen.add(ts)  # Slack repeats the root at the top of every page
                if not message["text"]:
                    continue
                if ts == spot.thread_ts:
                    root = message
                elif _ts_key(ts) < before:
                    newest.append(message)
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if cursor is None:
                break
    except SLACK_CALL_ERRORS as exc:
        log.info("thread history unavailable (%s); answering with what arrived", call_error_reason(exc))
    return root, newest


def _ts_key(ts: str) -> tuple[int, int]:
    """Slack ts compared exactly ("1.10" is after "1.9"), never through a float."""
    seconds, _, fraction = ts.partition(".")
    try:
        return int(seconds), int(fraction.ljust(6, "0")[:6] or 0)
    except ValueError:
        return (2**63, 0)  # not a ts: sorts after everything, so it is never context


def _is_person(message: dict[str, Any]) -> bool:
    return isinstance(message.get("user"), str) and not (message.get("bot_id") or message.get("bot_profile"))


def _bot_name(message: dict[str, Any]) -> str:
    profile = message.get("bot_profile")
    name = (profile.get("name") if isinstance(profile, dict) else None) or message.get("username")
    return str(name or message.get("bot_id") or "an app")


def _as_chat(message: dict[str, Any], names: dict[str, str], bot_user_id: str | None) -> ChatMessage:
    text = readable(strip_bot_mention(message["text"], bot_user_id), names)
    if bot_user_id and message.get("user") == bot_user_id:
        return ChatMessage("assistant", text)  # the bot's own earlier answer
    if _is_person(message):
        user_id = message["user"]
        label = f"[@{names.get(user_id, user_id)}]"
    else:
        label = f"[bot {_bot_name(message)}]"
    return ChatMessage("user", f"{label} {text}")
