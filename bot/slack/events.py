"""Which Slack events the bot answers: pure translation of an event into an Arrival or a reason to ignore."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeGuard

from bot.conversation.admission import Arrival
from bot.conversation.keys import ConversationKey, ConversationKind
from bot.slack.files import attachments_in

# Subtypes that are still a person writing; everything else (edits, deletions, joins, bots) is not.
_PERSON_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})


@dataclass(frozen=True)
class Ignored:
    reason: str


# Slack's ids and timestamps, bounded so they fit the database columns they are stored in.
SLACK_ID = re.compile(r"[A-Z0-9][A-Za-z0-9_]{0,23}")
SLACK_TS = re.compile(r"[0-9]{1,12}\.[0-9]{1,8}")
_EVENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_EVENT_TYPE = re.compile(r"[a-z_]{1,40}")


def event_type_label(body: dict[str, Any]) -> str:
    """The event's type as a metrics label: a Slack event type, or "invalid" (labels stay bounded)."""
    event = body.get("event")
    event_type = event.get("type") if isinstance(event, dict) else None
    if event_type is None:
        return "unknown"
    return event_type if isinstance(event_type, str) and _EVENT_TYPE.fullmatch(event_type) else "invalid"


def _matches(value: Any, pattern: re.Pattern[str]) -> TypeGuard[str]:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def classify(body: dict[str, Any], bot_user_id: str | None) -> Arrival | Ignored:
    event = body.get("event")
    if not isinstance(event, dict):
        return Ignored("malformed")
    event_type = event.get("type")
    if event_type not in ("app_mention", "message"):
        return Ignored("unsupported_type")
    if event.get("subtype") not in _PERSON_SUBTYPES:
        return Ignored("subtype")
    if event.get("bot_id") or event.get("bot_profile"):
        return Ignored("bot_message")
    user, channel, ts = event.get("user"), event.get("channel"), event.get("ts")
    if not (_matches(user, SLACK_ID) and _matches(channel, SLACK_ID) and _matches(ts, SLACK_TS)):
        return Ignored("malformed")
    if bot_user_id and user == bot_user_id:
        return Ignored("self")
    thread_ts = event.get("thread_ts")
    team = body.get("team_id") or event.get("team") or "T_UNKNOWN"
    event_id = body.get("event_id")
    if (
        (thread_ts is not None and not _matches(thread_ts, SLACK_TS))
        or not _matches(team, SLACK_ID)
        or (event_id is not None and not _matches(event_id, _EVENT_ID))
    ):
        return Ignored("malformed")
    raw_text = event.get("text")
    if raw_text is not None and not isinstance(raw_text, str):
        return Ignored("malformed")
    text = raw_text or ""
    mention_markup = f"<@{bot_user_id}>" if bot_user_id else None
    mentioned = event_type == "app_mention" or bool(mention_markup and mention_markup in text)
    is_dm = event.get("channel_type") == "im" or (event_type == "message" and channel.startswith("D"))
    in_thread = isinstance(thread_ts, str) and thread_ts != ts
    if not is_dm and not mentioned and not in_thread:
        return Ignored("not_addressed")
    # The reply goes to the thread's root: thread_ts, or the message itself when it starts one.
    root = thread_ts if isinstance(thread_ts, str) else ts
    return Arrival(
        event_id=str(event_id or f"{channel}:{ts}:{event_type}"),
        key=ConversationKey(str(team), channel, root),
        kind=ConversationKind.DM if is_dm else ConversationKind.CHANNEL,
        user_id=user,
        message_ts=ts,
        text=text,
        addressed=mentioned or is_dm,
        mid_thread=in_thread,
        attachments=attachments_in(event),
    )


_BOT_MENTION = r"<@{bot}(?:\|[^>]*)?>"
_USER = re.compile(r"<@([UW][A-Z0-9]+)(?:\|([^>]*))?>")
_CHANNEL = re.compile(r"<#([CGD][A-Z0-9]+)(?:\|([^>]*))?>")
_SPECIAL = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>")
_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|([^>]*))?>")


def strip_bot_mention(text: str, bot_user_id: str | None) -> str:
    """The person's text without the bot's own mention; every other character stays as written.

    Only the whitespace that separated the mention from the text goes with it: one space or tab
    after it ("<@BOT> hi"), else one before it ("hi <@BOT>"); a mention that starts the text takes the
    rest of its line with it, and one that ends the text takes the line break before it, so code
    pasted below or above a mention keeps its indentation and blank lines.
    """
    if not bot_user_id:
        return text
    pattern = re.compile(_BOT_MENTION.format(bot=re.escape(bot_user_id)))
    kept: list[str] = []
    position = 0  # text[:position] is decided
    for match in pattern.finditer(text):
        before = text[position : match.start()]
        start, end = match.start(), match.end()
        if not (before or any(kept)):  # the mention starts the text
            end = _separator_after(text, end, whole_line=True)
        elif (after := _separator_after(text, end, whole_line=False)) > end:
            end = after
        elif not text[end:].strip() or text[end] in "\r\n":  # it ends the text or its line
            start -= _separator_length_before(before)
        elif before.endswith((" ", "\t")):  # "ask <@BOT>, please": the space before goes
            start -= 1
        kept.append(text[position:start])
        position = end
    kept.append(text[position:])
    return "".join(kept)


def _separator_after(text: str, end: int, *, whole_line: bool) -> int:
    """Where the text resumes after a mention ending at `end`: past one space or tab, or (when
    `whole_line`) past the blanks and line breaks up to the next line that holds text."""
    if whole_line:
        blank = re.compile(r"[ \t]*(?:\r?\n[ \t]*)*\r?\n").match(text, end)
        if blank is not None:
            return blank.end()
    return end + 1 if text[end : end + 1] in (" ", "\t") else end


def _separator_length_before(before: str) -> int:
    """The blanks and one line break between the text and a mention that ends it."""
    match = re.search(r"(?:\r?\n)?[ \t]*\Z", before)
    return len(match.group()) if match else 0


def user_ids_in(text: str) -> list[str]:
    return list(dict.fromkeys(m.group(1) for m in _USER.finditer(text)))


def readable(text: str, names: dict[str, str]) -> str:
    """Slack markup -> plain text for the model: @names, #channels, links, unescaped entities."""
    text = _USER.sub(lambda m: "@" + (names.get(m.group(1)) or m.group(2) or m.group(1)), text)
    text = _CHANNEL.sub(lambda m: "#" + (m.group(2) or m.group(1)), text)
    text = _SPECIAL.sub(lambda m: "@" + m.group(1), text)
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})" if m.group(2) else m.group(1), text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
