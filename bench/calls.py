"""What a reply's thread showed, read from the fake Slack's call log alone, whatever way it streamed.

The fake records every request it acted on as a `Call` (method, params, when it acted, status). A
person reads the thread; so the measures here are about accepted calls that change what the thread
shows, by method name and by the text they carry:

- status shown: the first accepted `assistant.threads.setStatus` with a non-empty `status`;
- first visible answer text: the first accepted post, edit or stream call whose answer text is not
  empty and not the placeholder ("Thinking…" is not an answer);
- final state: the last accepted post, edit or stream call in a thread that is done.

Native streaming calls are known by name only (`chat.startStream`, `chat.appendStream`,
`chat.stopStream`), so these measures hold as soon as the bot and the fake use them, with no other
change here. A call names its thread directly (`thread_ts`) or through the message it changes (`ts`,
looked up in `MessageIndex`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bot.slack.text import PLACEHOLDER
from tests.fakes.slack_api import Call, FakeMessage

NAN = float("nan")
STATUS_METHOD = "assistant.threads.setStatus"
# Calls that create a message in a thread: their params name the thread's root.
CREATING = frozenset({"chat.postMessage", "chat.startStream"})
# Calls that change a message: their params name the message (`ts`).
CHANGING = frozenset({"chat.update", "chat.appendStream", "chat.stopStream"})
VISIBLE = CREATING | CHANGING
# Short names for the tables, in the order they are shown.
SHORT_NAMES = {
    STATUS_METHOD: "status",
    "chat.postMessage": "post",
    "chat.update": "update",
    "chat.startStream": "start",
    "chat.appendStream": "append",
    "chat.stopStream": "stop",
}

Thread = tuple[str, str]  # (channel, root ts)
MessageIndex = Mapping[tuple[str, str], str]  # (channel, message ts) -> its thread's root ts


def message_index(messages: Iterable[FakeMessage]) -> dict[tuple[str, str], str]:
    """(channel, ts) -> root ts for every message in a thread (a root maps to itself)."""
    return {(m.channel, m.ts): m.thread_ts or m.ts for m in messages}


def thread_of(call: Call, index: MessageIndex) -> Thread | None:
    """The thread a call is about, or None (users.info, auth.test, a message the index lacks)."""
    params = call.params
    if call.method == STATUS_METHOD:
        channel, root = params.get("channel_id"), params.get("thread_ts")
    elif call.method in CREATING:
        channel, root = params.get("channel"), params.get("thread_ts")
    elif call.method in CHANGING:
        channel = params.get("channel")
        root = index.get((str(channel), str(params.get("ts", ""))))
    elif call.method == "conversations.replies":
        channel, root = params.get("channel"), params.get("ts")
    else:
        return None
    return (str(channel), str(root)) if channel and root else None


def answer_text(params: Mapping[str, Any]) -> str:
    """The answer text a post, edit or stream call carries: its `markdown` blocks, `markdown_text`
    and markdown chunks. The plain `text` is left out: beside blocks it is only the notification
    fallback, and a message without blocks is a note, not an answer."""
    parts = [
        str(block.get("text", ""))
        for block in _dicts(params.get("blocks"))
        if block.get("type") == "markdown"
    ]
    if params.get("markdown_text"):
        parts.append(str(params["markdown_text"]))
    parts += [
        str(chunk.get("text", ""))
        for chunk in _dicts(params.get("chunks"))
        if chunk.get("type") in ("markdown_text", "markdown")
    ]
    return "".join(parts)


def shows_answer(text: str) -> bool:
    """Text a person can read as (part of) the answer: not blank and not the placeholder."""
    return bool(text.strip()) and text.strip() != PLACEHOLDER


def first_status_at(calls: Iterable[Call], index: MessageIndex) -> dict[Thread, float]:
    """Thread -> when Slack first accepted a non-empty status line for it (clearing it is not showing)."""
    found: dict[Thread, float] = {}
    for call in calls:
        if call.method == STATUS_METHOD and call.ok and str(call.params.get("status") or "").strip():
            thread = thread_of(call, index)
            if thread is not None and thread not in found:
                found[thread] = call.time
    return found


def first_text_at(calls: Iterable[Call], index: MessageIndex) -> dict[Thread, float]:
    """Thread -> when it first showed answer text, by whichever accepted call carried it."""
    found: dict[Thread, float] = {}
    for call in calls:
        if call.method in VISIBLE and call.ok and shows_answer(answer_text(call.params)):
            thread = thread_of(call, index)
            if thread is not None and thread not in found:
                found[thread] = call.time
    return found


def last_visible_at(calls: Iterable[Call], index: MessageIndex) -> dict[Thread, float]:
    """Thread -> when its last accepted post, edit or stream call acted (the final state, once done)."""
    found: dict[Thread, float] = {}
    for call in calls:
        if call.method in VISIBLE and call.ok:
            thread = thread_of(call, index)
            if thread is not None:
                found[thread] = max(found.get(thread, -math.inf), call.time)
    return found


def calls_by_method(calls: Iterable[Call]) -> dict[str, dict[str, int]]:
    """method -> {"calls", "ok", "429", "other"}: every attempt, the accepted ones, the refused ones."""
    found: dict[str, Counter[str]] = {}
    for call in calls:
        counts = found.setdefault(call.method, Counter())
        counts["calls"] += 1
        counts["ok" if call.ok else "429" if call.status == 429 else "other"] += 1
    return {
        method: {key: counts[key] for key in ("calls", "ok", "429", "other")}
        for method, counts in sorted(found.items())
    }


def calls_per_reply(calls: Sequence[Call], replies: int) -> dict[str, float]:
    """method -> calls (every attempt, refused ones too) per reply, over a scenario's measured calls."""
    counts = Counter(call.method for call in calls)
    return {method: round(n / replies, 2) for method, n in sorted(counts.items())} if replies else {}


def short_calls(per_reply: Mapping[str, float]) -> str:
    """`status 1.0 post 1.0 update 8.9 ...`: the methods that show the reply, then the rest summed."""
    shown = [f"{short} {per_reply[m]:.1f}" for m, short in SHORT_NAMES.items() if per_reply.get(m)]
    rest = sum(v for m, v in per_reply.items() if m not in SHORT_NAMES)
    return " ".join(shown + ([f"other {rest:.1f}"] if rest else [])) or "-"


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The dicts of a list param; a form-encoded call carries it as a JSON string."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
