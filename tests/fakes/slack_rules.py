"""What the fake Slack Web API enforces: rate limits per method, latency, message and Block Kit rules.

The numbers are Slack's published ones: rate limit tiers per method and workspace (Tier 2 20+, Tier 3
50+, Tier 4 100+ a minute), chat.postMessage about one a second per channel, conversations.replies
pages of 15 for distributed apps, and the block limits of Block Kit's reference. Slack publishes no
burst sizes; the small bursts here are our reading of "bursts allowed".
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

JsonDict = dict[str, Any]

UPDATE_TEXT_LIMIT = 4_000  # chat.update answers msg_too_long past this
POST_TEXT_LIMIT = 40_000  # chat.postMessage truncates past this
MARKDOWN_BLOCK_LIMIT = 12_000  # total `markdown` block text per message
STREAM_CALL_LIMIT = 12_000  # markdown_text of one chat.startStream/appendStream/stopStream call
STREAM_TOTAL_LIMIT = 40_000  # a streamed message as a whole fails with msg_too_long near this
STREAM_EXPIRY = 300.0  # seconds a stream stays open (message_not_in_streaming_state after)
MAX_BLOCKS = 50
VIEW_MAX_BLOCKS = 100  # modals and the Home tab
VIEW_TITLE_LIMIT = 24  # a modal's title, submit and close labels
PRIVATE_METADATA_LIMIT = 3_000
CALLBACK_ID_LIMIT = 255
INPUT_LABEL_LIMIT = 2_000
SECTION_TEXT_LIMIT = 3_000
SECTION_FIELDS = 10
SECTION_FIELD_LIMIT = 2_000
HEADER_TEXT_LIMIT = 150
CONTEXT_ELEMENTS = 10
CONTEXT_ELEMENT_TYPES = frozenset({"mrkdwn", "plain_text", "image"})
CONTEXT_ACTIONS_ELEMENTS = 5
CONTEXT_ACTIONS_TYPES = frozenset({"feedback_buttons", "icon_button"})
FEEDBACK_BUTTON_TEXT_LIMIT = 75
TEXT_TYPES = frozenset({"mrkdwn", "plain_text"})
ACTIONS_ELEMENTS = 25
IMAGE_ALT_LIMIT = 2_000  # image block: alt_text and title
SLACK_FILE_ID = re.compile(r"^F[A-Z0-9]{8,}$")  # the pattern Slack checks a slack_file id against
BUTTON_TEXT_LIMIT = 75
BUTTON_VALUE_LIMIT = 2_000
ACTION_ID_LIMIT = 255
# Every block type Block Kit documents; anything else is refused as Slack refuses it.
BLOCK_TYPES = frozenset(
    {
        "actions",
        "context",
        "context_actions",
        "divider",
        "file",
        "header",
        "image",
        "input",
        "markdown",
        "rich_text",
        "section",
        "table",
        "video",
    }
)
MAX_SUGGESTED_PROMPTS = 4  # assistant.threads.setSuggestedPrompts
REPLIES_PAGE_LIMIT = 15  # conversations.replies items per page for distributed non-Marketplace apps
SESSION_STATUSES = frozenset({"active", "processing", "suspended", "closed"})  # agents.sessions.setStatus
SESSION_TITLE_LIMIT = 200  # agents.sessions.rename


class Refusal(Exception):
    """Slack's answer to a call it refuses: `{"ok": false, "error": error}` with this HTTP status."""

    def __init__(self, error: str, status: int = 200, retry_after: int | None = None) -> None:
        super().__init__(error)
        self.error, self.status, self.retry_after = error, status, retry_after


# ---- rate limits ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `burst` calls at once, refilled at `per_minute`; kept per (method, team[, channel])."""

    per_minute: float
    burst: int = 1
    per: Literal["team", "channel"] = "team"


TIER_2 = RateLimit(20, burst=3)
TIER_3 = RateLimit(50, burst=5)
TIER_4 = RateLimit(100, burst=10)

SLACK_LIMITS: Mapping[str, RateLimit] = MappingProxyType(
    {
        "chat.postMessage": RateLimit(60, burst=3, per="channel"),
        "chat.update": TIER_3,
        "chat.delete": TIER_3,
        "chat.postEphemeral": TIER_4,
        "chat.startStream": TIER_2,
        "chat.appendStream": TIER_4,
        "chat.stopStream": TIER_2,
        "conversations.replies": TIER_3,
        "assistant.threads.setSuggestedPrompts": TIER_4,
        "assistant.threads.setTitle": TIER_4,
        "users.info": TIER_4,
        "assistant.threads.setStatus": RateLimit(600, burst=20),  # "special": our reading, as the bench's
        "conversations.info": TIER_3,
        "conversations.history": TIER_3,
        "conversations.members": TIER_4,
        "conversations.list": TIER_2,
        "files.info": TIER_4,
        "views.open": TIER_4,
        "views.publish": TIER_4,
        "views.update": TIER_4,
        # Tier 3 as slack-morphism declares them (Slack's page for the methods names no tier).
        "agents.sessions.setStatus": TIER_3,
        "agents.sessions.rename": TIER_3,
    }
)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class Buckets:
    """The token buckets of every (method, team[, channel]) key the fake has seen."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, ...], _Bucket] = {}

    def take(self, key: tuple[str, ...], limit: RateLimit, now: float) -> None:
        """Spend one call of `key`'s bucket, or refuse with 429 and the seconds until one is back."""
        bucket = self._buckets.setdefault(key, _Bucket(float(limit.burst), now))
        per_second = limit.per_minute / 60.0
        bucket.tokens = min(float(limit.burst), bucket.tokens + (now - bucket.updated) * per_second)
        bucket.updated = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / per_second
            raise Refusal("ratelimited", 429, max(1, math.ceil(wait)))
        bucket.tokens -= 1.0


class SeededLatency:
    """Seconds a call takes, uniform in [low, high) from a seeded generator: repeatable, not constant."""

    def __init__(self, low: float = 0.02, high: float = 0.04, seed: int = 0) -> None:
        self._low, self._high = low, high
        self._random = random.Random(seed)

    def __call__(self, method: str) -> float:  # noqa: ARG002 - the same spread for every method
        return self._random.uniform(self._low, self._high)


# ---- faults --------------------------------------------------------------------------------------

FaultKind = Literal["server_error", "reset"]


class Fault:
    """Trouble a test asked for on one method: the next `times` calls, or each with `probability`."""

    def __init__(
        self, kind: FaultKind, *, times: int | None, probability: float | None, seed: int, status: int
    ) -> None:
        if (times is None) == (probability is None):
            raise ValueError("give either times or probability")
        if probability is not None and not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        if kind == "server_error" and not 500 <= status <= 599:
            raise ValueError("a server error needs a 5xx status")
        self.kind, self.status = kind, status
        self._remaining, self._probability = times, probability
        self._random = random.Random(seed)

    def fires(self) -> bool:
        if self._remaining is not None:
            if self._remaining <= 0:
                return False
            self._remaining -= 1
            return True
        assert self._probability is not None
        return self._random.random() < self._probability


# ---- native streams ------------------------------------------------------------------------------


def stream_text(params: JsonDict) -> str:
    """The Markdown a stream call adds: `markdown_text`, or its `markdown_text` chunks."""
    text = params.get("markdown_text")
    chunks = params.get("chunks")
    if text is not None and chunks:
        raise Refusal("invalid_arguments")
    if chunks:
        if not isinstance(chunks, list):
            raise Refusal("invalid_chunks")
        parts = []
        for chunk in chunks:
            if isinstance(chunk, dict) and chunk.get("type") == "task_update":
                check_task(chunk)
                continue  # a timeline entry, not text (the fake keeps them in FakeMessage.tasks)
            if not isinstance(chunk, dict) or chunk.get("type") != "markdown_text":
                raise Refusal("invalid_chunks")  # plan chunks are not modelled
            parts.append(str(chunk.get("text", "")))
        text = "".join(parts)
    text = str(text or "")
    if len(text) > STREAM_CALL_LIMIT:
        raise Refusal("msg_too_long")
    return text


TASK_STATUSES = frozenset({"pending", "in_progress", "complete", "error"})


def check_task(chunk: JsonDict) -> None:
    """A `task_update` chunk needs an id, a title and one of the four statuses."""
    if not chunk.get("id") or not chunk.get("title") or chunk.get("status") not in TASK_STATUSES:
        raise Refusal("invalid_chunks")


def check_recipients(params: JsonDict, channel: str) -> None:
    """Streams in channels go to one person: `recipient_user_id` and `recipient_team_id` are required
    there (not in DMs, whose ids start with D)."""
    if channel.startswith("D"):
        return
    if not params.get("recipient_user_id"):
        raise Refusal("missing_recipient_user_id")
    if not params.get("recipient_team_id"):
        raise Refusal("missing_recipient_team_id")


# ---- message bodies ------------------------------------------------------------------------------


def message_content(params: JsonDict) -> tuple[str, list[JsonDict] | None]:
    """Validate a message body the way Slack does and return (text, blocks)."""
    text, blocks, markdown_text = params.get("text"), params.get("blocks"), params.get("markdown_text")
    if markdown_text is not None:
        if text is not None or blocks is not None:
            raise Refusal("invalid_arguments")  # markdown_text excludes text and blocks
        if len(markdown_text) > MARKDOWN_BLOCK_LIMIT:
            raise Refusal("msg_too_long")
        return str(markdown_text), [{"type": "markdown", "text": str(markdown_text)}]
    if blocks is not None:
        validate_blocks(blocks)
    if not text and not blocks:
        raise Refusal("no_text")
    return str(text or ""), blocks or None


def validate_view(view: Any, *, kinds: frozenset[str]) -> JsonDict:
    """Refuse a view (`invalid_arguments`) as views.open/publish/update do; return it as a dict.

    `kinds`: the view types the method takes (views.publish only "home")."""
    if isinstance(view, str):
        try:
            view = json.loads(view)
        except ValueError:
            raise Refusal("invalid_arguments") from None
    if not isinstance(view, dict) or view.get("type") not in kinds:
        raise Refusal("invalid_arguments")
    blocks = view.get("blocks")
    if not isinstance(blocks, list):
        raise Refusal("invalid_arguments")
    try:
        validate_blocks(blocks, limit=VIEW_MAX_BLOCKS)
    except Refusal:
        raise Refusal("invalid_arguments") from None
    if len(str(view.get("private_metadata", ""))) > PRIVATE_METADATA_LIMIT:
        raise Refusal("invalid_arguments")
    if len(str(view.get("callback_id", ""))) > CALLBACK_ID_LIMIT:
        raise Refusal("invalid_arguments")
    if view["type"] == "modal":
        try:
            _check_text(view.get("title"), VIEW_TITLE_LIMIT, types=frozenset({"plain_text"}))
            for label in ("submit", "close"):
                if view.get(label) is not None:
                    _check_text(view[label], VIEW_TITLE_LIMIT, types=frozenset({"plain_text"}))
        except Refusal:
            raise Refusal("invalid_arguments") from None
        if view.get("submit") is None and any(b.get("type") == "input" for b in blocks):
            raise Refusal("invalid_arguments")  # a modal with inputs needs a submit button
    return view


def validate_blocks(blocks: Any, *, limit: int = MAX_BLOCKS) -> None:
    """Refuse (`invalid_blocks`) what Block Kit refuses; only the rules our messages could break."""
    if not isinstance(blocks, list) or len(blocks) > limit:
        raise Refusal("invalid_blocks")
    markdown_total = 0
    for block in blocks:
        if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
            raise Refusal("invalid_blocks")
        kind = block["type"]
        if kind == "markdown":
            text = block.get("text")
            if not isinstance(text, str) or not text:
                raise Refusal("invalid_blocks")
            markdown_total += len(text)
        elif kind == "context":
            _check_context(block)
        elif kind == "context_actions":
            _check_context_actions(block)
        elif kind == "section":
            _check_section(block)
        elif kind == "header":
            _check_text(block.get("text"), HEADER_TEXT_LIMIT, types=frozenset({"plain_text"}))
        elif kind == "input":
            _check_text(block.get("label"), INPUT_LABEL_LIMIT, types=frozenset({"plain_text"}))
            if not isinstance(block.get("element"), dict) or "type" not in block["element"]:
                raise Refusal("invalid_blocks")
        elif kind == "actions":
            _check_actions(block)
        elif kind == "image":
            _check_image(block)
    if markdown_total > MARKDOWN_BLOCK_LIMIT:
        raise Refusal("invalid_blocks")


def _check_context(block: JsonDict) -> None:
    elements = block.get("elements")
    if not isinstance(elements, list) or not 1 <= len(elements) <= CONTEXT_ELEMENTS:
        raise Refusal("invalid_blocks")
    for element in elements:
        if not isinstance(element, dict) or element.get("type") not in CONTEXT_ELEMENT_TYPES:
            raise Refusal("invalid_blocks")
        if element["type"] != "image":
            _check_text(element, SECTION_TEXT_LIMIT)


def _check_context_actions(block: JsonDict) -> None:
    elements = block.get("elements")
    if not isinstance(elements, list) or not 1 <= len(elements) <= CONTEXT_ACTIONS_ELEMENTS:
        raise Refusal("invalid_blocks")
    for element in elements:
        if not isinstance(element, dict) or element.get("type") not in CONTEXT_ACTIONS_TYPES:
            raise Refusal("invalid_blocks")
        if element["type"] == "feedback_buttons":
            for side in ("positive_button", "negative_button"):
                button = element.get(side)
                if not isinstance(button, dict) or not isinstance(button.get("value"), str):
                    raise Refusal("invalid_blocks")
                _check_text(button.get("text"), FEEDBACK_BUTTON_TEXT_LIMIT, types=frozenset({"plain_text"}))


def _check_image(block: JsonDict) -> None:
    """An image block: alt text, an optional plain-text title, and exactly one of `image_url` and
    `slack_file`; a Slack file object names exactly one of `id` and `url` (docs.slack.dev's
    reference: "If both are provided then the payload will be rejected")."""
    alt = block.get("alt_text")
    if not isinstance(alt, str) or not 1 <= len(alt) <= IMAGE_ALT_LIMIT:
        raise Refusal("invalid_blocks")
    if block.get("title") is not None:
        _check_text(block["title"], IMAGE_ALT_LIMIT, types=frozenset({"plain_text"}))
    url, file = block.get("image_url"), block.get("slack_file")
    if (url is None) == (file is None):
        raise Refusal("invalid_blocks")
    if file is not None:
        if not isinstance(file, dict) or ("id" in file) == ("url" in file):
            raise Refusal("invalid_blocks")
        if "id" in file and not SLACK_FILE_ID.match(str(file["id"])):
            raise Refusal("invalid_blocks")


def slack_file_ids(blocks: Any) -> list[str]:
    """The file ids image blocks show through `slack_file` (the caller checks it may show them)."""
    if not isinstance(blocks, list):
        return []
    return [
        str(b["slack_file"]["id"])
        for b in blocks
        if isinstance(b, dict) and isinstance(b.get("slack_file"), dict) and "id" in b["slack_file"]
    ]


def _check_section(block: JsonDict) -> None:
    text, fields = block.get("text"), block.get("fields")
    if text is None and fields is None:
        raise Refusal("invalid_blocks")  # a section shows text, fields or both
    if text is not None:
        _check_text(text, SECTION_TEXT_LIMIT)
    if fields is not None:
        if not isinstance(fields, list) or not 1 <= len(fields) <= SECTION_FIELDS:
            raise Refusal("invalid_blocks")
        for field in fields:
            _check_text(field, SECTION_FIELD_LIMIT)


def _check_actions(block: JsonDict) -> None:
    """An actions block: 1..25 interactive elements; buttons as Block Kit's reference limits them."""
    elements = block.get("elements")
    if not isinstance(elements, list) or not 1 <= len(elements) <= ACTIONS_ELEMENTS:
        raise Refusal("invalid_blocks")
    for element in elements:
        if not isinstance(element, dict) or not isinstance(element.get("type"), str):
            raise Refusal("invalid_blocks")
        if element["type"] != "button":
            continue
        _check_text(element.get("text"), BUTTON_TEXT_LIMIT, types=frozenset({"plain_text"}))
        action_id, value = element.get("action_id", ""), element.get("value", "")
        if not isinstance(action_id, str) or len(action_id) > ACTION_ID_LIMIT:
            raise Refusal("invalid_blocks")
        if not isinstance(value, str) or len(value) > BUTTON_VALUE_LIMIT:
            raise Refusal("invalid_blocks")


def _check_text(obj: Any, limit: int, *, types: frozenset[str] = TEXT_TYPES) -> None:
    """A composition text object: a known type and 1..limit characters."""
    if not isinstance(obj, dict) or obj.get("type") not in types:
        raise Refusal("invalid_blocks")
    text = obj.get("text")
    if not isinstance(text, str) or not 1 <= len(text) <= limit:
        raise Refusal("invalid_blocks")
