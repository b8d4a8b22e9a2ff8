"""Finishing replies whose process died while streaming: the Slack message gets an interrupted note,
and the ledger a row for the call whose cost is unknown (unless the call's own row is there)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from datetime import timedelta
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.lease import PLACE_LEASE_SECONDS
from bot.slack.call_errors import SLACK_CALL_ERRORS
from bot.slack.edit_budget import UPDATE, EditBudget, EditBudgets
from bot.slack.renderer import classify_error
from bot.slack.retries import with_rate_limit_retries
from bot.slack.text import MAX_MESSAGE_CHARS, defuse, find_split, mrkdwn_escape
from bot.storage import conversations as repo
from bot.storage.db import dialect_name
from bot.storage.models import Conversation, ConversationKind, Message, utcnow
from bot.storage.signals import notify
from bot.storage.turn_places import TURN_ENDED
from bot.storage.usage import RECOVERED_STATUS, UsageEntry, record_if_absent

log = logging.getLogger(__name__)

NOTE_RESTARTED = "This answer was interrupted because the bot restarted. Please ask again."
NOTE_TRIES = 8  # chat.update attempts through 429s before a note is given up
POSTS_AT_ONCE = 4  # notes posted as messages of their own, each in its claim's transaction
PLACE_LEASE = timedelta(
    seconds=PLACE_LEASE_SECONDS
)  # the turn places' (PostgreSQL: a gone replica's replies)


def last_part(content: str, messages: int, limit: int = MAX_MESSAGE_CHARS) -> str:
    """The part of `content` that the last of `messages` Slack messages shows (the renderer's split),
    for replies stored before their split points were."""
    start, carry = 0, ""
    for _ in range(messages - 1):
        body = carry + content[start:]
        if len(body) <= limit:
            break
        point = find_split(body, limit)
        start += point.cut - len(carry)
        carry = point.reopen
    body = carry + content[start:]
    return find_split(body, limit).head(body) if len(body) > limit else body


def last_message(message: Message) -> tuple[str, str] | None:
    """The ts of the reply's last Slack message and the text it should show, from the stored split
    points (the renderer may have used a smaller limit than MAX_MESSAGE_CHARS)."""
    refs = message.slack_ts_all or ([message.slack_ts] if message.slack_ts else [])
    parts = message.slack_parts or []
    if parts and str(parts[-1].get("ts")) == (refs[-1] if refs else None):
        last = parts[-1]
        start, reopen = last.get("start"), last.get("reopen") or ""
        limit = last.get("limit") or MAX_MESSAGE_CHARS
        if isinstance(start, int) and isinstance(reopen, str) and isinstance(limit, int):
            body = reopen + message.content[start:]
            return refs[-1], find_split(body, limit).head(body) if len(body) > limit else body
    if not refs:
        return None
    return refs[-1], last_part(message.content, len(refs))


async def recover_interrupted_replies(
    sessions: async_sessionmaker[AsyncSession],
    client: AsyncWebClient,
    *,
    model: str,
    budgets: EditBudgets | None = None,
    ignore_leases: bool = False,
    kept: Collection[int] = (),
    legacy_after: timedelta = repo.LEGACY_STALE_AFTER,
    presence: bool = False,
) -> int:
    """Claim each reply whose lease expired (all of them when `ignore_leases`: the only process
    is starting), except those this process is still streaming (`kept`), mark it interrupted with
    a ledger row, then show the note in Slack. A reply without a lease (written before leases
    existed) counts as expired once older than `legacy_after`. `presence` (PostgreSQL, this
    replica's listener steady): a reply whose replica's listener is gone counts as expired sooner
    (bot.storage.conversations.HOLDER_GONE_AFTER)."""
    now = utcnow()
    place_lease = PLACE_LEASE if presence else None

    async def claim(session: AsyncSession, message: Message, conversation: Conversation) -> bool:
        if not await repo.claim_for_recovery(
            session,
            message.id,
            now,
            ignore_leases=ignore_leases,
            legacy_after=legacy_after,
            place_lease=place_lease,
        ):
            return False  # another replica took it, or its process renewed the lease meanwhile
        user = await repo.requester(session, message)
        await record_if_absent(session, _interrupted_usage(message, conversation, user, model))
        return True

    claimed: list[tuple[Message, Conversation]] = []
    posted_with_claim: list[tuple[Message, Conversation]] = []
    async with sessions.begin() as session:
        lines = dialect_name(session) == "postgresql"
        candidates = await repo.expired_streaming_messages(
            session,
            now,
            ignore_leases=ignore_leases,
            kept=kept,
            legacy_after=legacy_after,
            place_lease=place_lease,
        )
        for message, conversation in candidates:
            if lines and _note_only(message, conversation):
                posted_with_claim.append((message, conversation))  # below, each in its own transaction
            elif await claim(session, message, conversation):
                claimed.append((message, conversation))
        if lines:
            for conversation_id in {conversation.id for _, conversation in claimed}:
                await notify(session, TURN_ENDED, str(conversation_id))  # the turns after it look again
    edits: dict[str, list[tuple[str, str, str]]] = {}  # per workspace: (channel, ts, text so far)
    posts = []
    for message, conversation in claimed:
        if conversation.kind is ConversationKind.TERMINAL:
            continue
        shown = last_message(message)
        if shown is None:  # it died before its first message: the person has only seen a status
            posts.append(_post_interrupted(client, conversation.channel_id, conversation.thread_ts))
        else:
            edits.setdefault(conversation.team_id, []).append((conversation.channel_id, *shown))
    # All at once: each workspace's budget paces its own (a dead replica's dozens of replies over
    # several workspaces, one after another, took 90 s in bench (f)); the notes' slots are booked
    # in one go, ahead of every replica's next edit: these people have waited longest. An edit
    # changes the reply's own message in place, so the turns after it need not wait for it.
    notes = [_edit_workspace(client, budgets, team, found) for team, found in edits.items()]
    at_once = asyncio.Semaphore(POSTS_AT_ONCE)
    with_claims = [
        _claim_and_post(sessions, client, claim, message, conversation, at_once)
        for message, conversation in posted_with_claim
    ]
    _, taken = await asyncio.gather(asyncio.gather(*notes, *posts), asyncio.gather(*with_claims))
    claimed += [pair for pair, ok in zip(posted_with_claim, taken, strict=True) if ok]
    if claimed:
        log.info("recovered %d interrupted replies", len(claimed))
    return len(claimed)


def _note_only(message: Message, conversation: Conversation) -> bool:
    """The reply died before its first Slack message: its note is a message of its own."""
    return conversation.kind is not ConversationKind.TERMINAL and last_message(message) is None


async def _claim_and_post(
    sessions: async_sessionmaker[AsyncSession],
    client: AsyncWebClient,
    claim: Callable[[AsyncSession, Message, Conversation], Awaitable[bool]],
    message: Message,
    conversation: Conversation,
    at_once: asyncio.Semaphore,
) -> bool:
    """PostgreSQL: claim a reply that died before its first message and post its note before the
    claim commits. The turns after it wait until then (bot.storage.turn_places), so the note comes
    before their answers, not after the next answer as in bench (f). One short transaction per note
    (a slow post holds up its own thread only); a post whose claim then fails to commit (the
    database gone, shutdown) is posted again by the next recovery."""
    async with at_once, sessions.begin() as session:
        if not await claim(session, message, conversation):
            return False
        await _post_interrupted(client, conversation.channel_id, conversation.thread_ts)
        await notify(session, TURN_ENDED, str(conversation.id))
        return True


def _interrupted_usage(
    message: Message, conversation: Conversation, user_id: str | None, model: str
) -> UsageEntry:
    """What is known of a call whose process died: who and where, never what it cost (NULL)."""
    return UsageEntry(
        team_id=conversation.team_id,
        channel_id=conversation.channel_id,
        user_id=user_id,
        conversation_id=conversation.id,
        model_requested=model,
        model_returned=None,
        prompt_tokens=None,
        completion_tokens=None,
        cached_tokens=None,
        reasoning_tokens=None,
        credits_used=None,
        usd_spent=None,
        finish_reason=None,
        status=RECOVERED_STATUS,
        ttft_ms=None,
        duration_ms=None,
        client_request_id=message.request_id,
        inference_id=None,
    )


async def _edit_workspace(
    client: AsyncWebClient, budgets: EditBudgets | None, team: str, found: list[tuple[str, str, str]]
) -> None:
    budget = None if budgets is None else budgets.for_team(team, UPDATE)
    waits = [0.0] * len(found) if budget is None else await budget.book(len(found))
    log.info(
        "interrupted notes booked",
        extra={"team": team, "notes": len(found), "last_in_s": round(max(waits), 1)},
    )
    await asyncio.gather(
        *(
            _show_interrupted(client, budget, *note, after=wait)
            for note, wait in zip(found, waits, strict=True)
        )
    )


async def _post_interrupted(client: AsyncWebClient, channel: str, thread_ts: str) -> None:
    """The note as a reply in the thread (a message of its own, outside the edit budget)."""
    warning = f":warning: _{mrkdwn_escape(NOTE_RESTARTED)}_"
    try:
        await with_rate_limit_retries(client).chat_postMessage(
            channel=channel, thread_ts=thread_ts, text=NOTE_RESTARTED, blocks=[_context(warning)]
        )
    except SLACK_CALL_ERRORS as exc:
        log.warning("could not post an interrupted note in %s: %s", channel, _why(exc))


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


async def _show_interrupted(
    client: AsyncWebClient,
    budget: EditBudget | None,
    channel: str,
    ts: str,
    body: str,
    *,
    after: float | None = None,
) -> None:
    """The note, as a final edit within the workspace's chat.update budget (a dead replica's replies
    come in dozens, beside live streams), through Slack's 429s: the row is already `interrupted`, so
    a note given up here is never shown."""
    body = defuse(body)  # the model's text: it must not notify anyone (see bot.slack.text.defuse)
    warning = f":warning: _{mrkdwn_escape(NOTE_RESTARTED)}_"
    note = _context(warning)
    blocks: list[dict[str, Any]] = [{"type": "markdown", "text": body}, note] if body.strip() else [note]
    # `text` is only the notification's fallback: a natively streamed part is longer than the
    # 4,000 characters chat.update takes there, and shows in full in the markdown block.
    text = body[:MAX_MESSAGE_CHARS] or NOTE_RESTARTED
    key = ("recovery", channel, ts)
    booked = after  # the first try's slot, booked with the workspace's other notes
    try:
        for _ in range(NOTE_TRIES):
            if booked is not None:
                await asyncio.sleep(booked)
                booked = None
            elif budget is not None:
                await budget.acquire(key, final=True)
            try:
                await client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
            except SLACK_CALL_ERRORS as exc:
                kind, retry_after = classify_error(exc)
                if kind != "ratelimited":
                    log.warning("could not mark reply %s in %s as interrupted: %s", ts, channel, _why(exc))
                    return
                if budget is not None:
                    budget.penalize(retry_after)
                else:
                    await asyncio.sleep(retry_after)
                continue
            if budget is not None:
                budget.reward()
            return
        log.warning("could not mark reply %s in %s as interrupted: still rate limited", ts, channel)
    finally:
        if budget is not None:
            budget.forget(key)


def _why(exc: Exception) -> str:
    return str(exc.response.get("error")) if isinstance(exc, SlackApiError) else repr(exc)
