"""Summaries in Slack: the "Summarise thread" message shortcut and `/glm summarize [#channel] [24h]`.

Both read with the asker's permissions (bot.slack.reading), ask the model once
(bot.conversation.summaries) and show the summary only to the asker: an ephemeral message in the
thread for the shortcut, in the channel where the command ran for `/glm summarize`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientError
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot.conversation.admission import AdmissionStage, Arrival, Candidate, QuotaStage, Refused, Reservation
from bot.conversation.channel_settings import DEFAULT_CHANNEL_SETTINGS, ChannelSettingsSource
from bot.conversation.keys import ConversationKey, ConversationKind
from bot.conversation.person import Person
from bot.conversation.summaries import Summarizer, Summary, SummaryRequest
from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason
from bot.slack.glm_command import GlmRequest, Subcommand
from bot.slack.people import UserDirectory
from bot.slack.read_access import ReadRefused
from bot.slack.reading import SlackReader, Transcript, parse_since

log = logging.getLogger(__name__)

SHORTCUT_CALLBACK_ID = "summarise_thread"  # config/slack-manifest.yml features.shortcuts
DEFAULT_WINDOW = "24h"
MAX_WINDOW_SECONDS = 30 * 86_400
_WINDOW = re.compile(r"\d{1,4}[mhdw]", re.IGNORECASE)
SUMMARY_TEXT_LIMIT = 11_000  # a markdown block holds 12,000 characters; room for the context line
USAGE = "summarize [#channel] [24h]"
NOT_HERE = "You can't use me here."


@dataclass(frozen=True)
class Summaries:
    reader: SlackReader
    summarizer: Summarizer
    people: UserDirectory
    admins: frozenset[str] = frozenset()
    # The admission's policy stages (access lists, ...): whoever may not ask the bot here gets no
    # summary either. The channel's settings are what the stages decide on.
    stages: tuple[AdmissionStage, ...] = ()
    channels: ChannelSettingsSource | None = None
    quota: QuotaStage | None = None  # reserves credits for the summary's call, like a turn's

    async def _asker(self, user_id: str, team_id: str) -> Person | None:
        profile = await self.people.lookup(user_id)
        return profile.asker(admins=self.admins, workspace=team_id) if profile is not None else None

    async def _candidate(self, key: ConversationKey, user_id: str, asker: Person | None) -> Candidate:
        """The request as the admission's stages see a message: who asks, where, the channel's settings."""
        channel = DEFAULT_CHANNEL_SETTINGS
        if self.channels is not None and (self.stages or self.quota is not None):
            channel = await self.channels.for_channel(key.team_id, key.channel_id)
        kind = ConversationKind.DM if key.channel_id.startswith("D") else ConversationKind.CHANNEL
        request = Arrival(
            f"summary:{key.channel_id}:{key.thread_ts}", key, kind, user_id, key.thread_ts, "", True
        )
        return Candidate(request, asker, channel)

    async def _refusal(self, candidate: Candidate) -> str | None:
        """The note for a person the policy stages refuse here; None when they may ask."""
        for stage in self.stages:
            refused = await stage.check(candidate)
            if refused is not None:
                return refused.notice or NOT_HERE
        return None

    async def _summarise(
        self, candidate: Candidate, transcript: Transcript, what: str
    ) -> list[dict[str, Any]]:
        if transcript.messages == 0:
            return _blocks(f"There are no messages to summarise in {what}.", None)
        reservation: Reservation | None = None
        if self.quota is not None:
            reserved = await self.quota.reserve(candidate)
            if isinstance(reserved, Refused):
                return _blocks(reserved.notice or NOT_HERE, None)
            reservation = reserved
        summary: Summary | None = None
        try:
            key = candidate.arrival.key
            summary = await self.summarizer.summarize(
                SummaryRequest(key.team_id, key.channel_id, candidate.arrival.user_id, what, transcript.text),
                reservation,
            )
        finally:
            if reservation is not None:
                await _end_reservation(reservation, summary)
        footer = f"Summary of {transcript.messages} messages"
        if transcript.left_out:
            footer += f" ({transcript.left_out} older ones left out)"
        if summary.credits_used is not None:
            footer += f" · {summary.credits_used:,} credits"
        return _blocks(summary.text, footer if summary.ok else None)

    async def on_shortcut(
        self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond
    ) -> None:
        """The "Summarise thread" shortcut: the thread a message is in (or starts), for the person only."""
        await ack()
        channel_id = _id(body.get("channel"))
        user_id = _id(body.get("user"))
        team_id = _id(body.get("team")) or str(body.get("team_id") or "")
        message = body.get("message")
        message = message if isinstance(message, dict) else {}
        thread_ts = str(message.get("thread_ts") or message.get("ts") or "")
        if not (channel_id and user_id and thread_ts):
            log.warning("summary shortcut without its channel, user or message")
            return
        asker = await self._asker(user_id, team_id)
        candidate = await self._candidate(ConversationKey(team_id, channel_id, thread_ts), user_id, asker)
        refusal = await self._refusal(candidate)
        if refusal is not None:
            await _say(respond, refusal, user_id)
            return
        try:
            limit = self.reader.limits.max_messages
            transcript = await self.reader.thread(channel_id, thread_ts, limit, asker, user_id)
        except ReadRefused as exc:
            await _say(respond, exc.message, user_id)
            return
        blocks = await self._summarise(candidate, transcript, "this thread")
        try:
            await client.chat_postEphemeral(
                channel=channel_id, user=user_id, thread_ts=thread_ts, blocks=blocks, text=_fallback(blocks)
            )
        except SLACK_CALL_ERRORS as exc:
            log.info(
                "summary not posted in the thread (%s); answering through response_url",
                call_error_reason(exc),
            )
            await _say(respond, _fallback(blocks), user_id)

    async def command(self, request: GlmRequest) -> str | None:
        """`/glm summarize [#channel] [24h]`: the channel (this one by default) over the window."""
        windows = [w.lower() for w in request.args.split() if _WINDOW.fullmatch(w)]
        others = [w for w in request.args.split() if not _WINDOW.fullmatch(w)]
        if len(windows) > 1 or len(others) > 1:
            return f"Usage: `/glm {USAGE}`, e.g. `/glm summarize #general 24h`."
        window = windows[0] if windows else DEFAULT_WINDOW
        since = parse_since(window)
        if parse_since("0m") - since > MAX_WINDOW_SECONDS:
            return "I summarise at most the last 30 days."
        asker = await self._asker(request.user_id, request.team_id)
        try:
            channel_id = await self.reader.channel_id(others[0]) if others else request.channel_id
            if channel_id is None:
                return f"I don't know a channel `{others[0]}` that I am in. Usage: `/glm {USAGE}`."
            key = ConversationKey(request.team_id, channel_id, "")
            candidate = await self._candidate(key, request.user_id, asker)
            refusal = await self._refusal(candidate)
            if refusal is not None:
                return refusal
            limit = self.reader.limits.max_messages
            transcript = await self.reader.channel(channel_id, since, limit, asker, request.user_id)
        except ReadRefused as exc:
            return exc.message
        name = f"#{transcript.conversation.name}" if transcript.conversation.name else "this conversation"
        blocks = await self._summarise(candidate, transcript, f"{name} over the last {window}")
        try:
            await request.client.chat_postEphemeral(
                channel=request.channel_id, user=request.user_id, blocks=blocks, text=_fallback(blocks)
            )
        except SLACK_CALL_ERRORS as exc:
            log.info("summary not posted as a note (%s); answering the command", call_error_reason(exc))
            return _fallback(blocks)
        return None

    def subcommand(self) -> Subcommand:
        return Subcommand(USAGE, "a summary of a channel's recent messages, only for you", self.command)


async def _end_reservation(reservation: Reservation, summary: Summary | None) -> None:
    """Keep what the call cost, or give the credits back when it never ran."""
    try:
        if summary is not None and summary.outcome is not None:
            await reservation.settle(summary.outcome)
        else:
            await reservation.release()
    except Exception:
        # The quota stage owns its errors; the summary is shown regardless.
        log.exception("could not end the summary's credit reservation")


def register_summaries(app: AsyncApp, summaries: Summaries) -> None:
    app.shortcut(SHORTCUT_CALLBACK_ID)(summaries.on_shortcut)


def _id(value: Any) -> str:
    return str(value.get("id") or "") if isinstance(value, dict) else ""


def _blocks(text: str, footer: str | None) -> list[dict[str, Any]]:
    if len(text) > SUMMARY_TEXT_LIMIT:
        text = text[:SUMMARY_TEXT_LIMIT] + "…"
    blocks: list[dict[str, Any]] = [{"type": "markdown", "text": text}]
    if footer:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]})
    return blocks


def _fallback(blocks: list[dict[str, Any]]) -> str:
    """The plain text of the blocks, for notifications and for answers that take no blocks."""
    return str(blocks[0]["text"])[:3_900]


async def _say(respond: AsyncRespond, text: str, user_id: str) -> None:
    try:
        await respond(text=text, response_type="ephemeral", replace_original=False)
    except (ClientError, TimeoutError, OSError) as exc:
        log.warning("summary: answer not delivered: %s", type(exc).__name__, extra={"user_id": user_id})
