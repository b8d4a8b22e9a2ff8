"""The shape of a request body on /slack/events, checked before Bolt reads it.

Slack sends a UTF-8 JSON object (events) or form data (slash commands, interactivity). Bolt parses
the body and reads ids out of it before it checks the signature, assuming Slack's shapes: a body that
is a JSON array, or an `event` that is a string, makes it raise and answer 500, which Slack retries.
A body that fails these checks gets a 400 instead and never reaches Bolt.
"""

from __future__ import annotations

from typing import Any

from slack_bolt.request.internals import parse_body

# Where Bolt's context builders look for ids: a string id, or an object carrying one.
_ID_FIELDS = ("team", "user", "channel", "enterprise")
# Nested objects Bolt looks into for those ids.
_NESTED = ("event", "message", "previous_message", "item", "assistant_thread", "view")


class MalformedBody(Exception):
    """The request body is not something Slack sends; the message says what is wrong (no body text)."""


def parse_slack_body(raw: bytes, content_type: str | None) -> str:
    """The body as text when it has a shape Slack sends; raises MalformedBody otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBody("the body is not UTF-8") from None
    try:
        # Bolt's own parser, so the check judges exactly what Bolt will dispatch.
        payload: Any = parse_body(text, content_type)
    except RecursionError:
        raise MalformedBody("the body is nested too deeply") from None
    except ValueError:
        raise MalformedBody("the body is neither JSON nor form data") from None
    if not isinstance(payload, dict):
        raise MalformedBody("the body is not a JSON object")
    if "event" in payload:  # Bolt reads `body.get("event", {})` as an object
        event = payload["event"]
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise MalformedBody("`event` is not an object with a type")
    _check_scope(payload, depth=0)
    return text


def _check_scope(scope: dict[str, Any], depth: int) -> None:
    for name in _ID_FIELDS:
        if not isinstance(scope.get(name), str | dict | None):
            raise MalformedBody(f"`{name}` is neither an id nor an object")
    authorizations = scope.get("authorizations")
    if authorizations is not None and not (
        isinstance(authorizations, list) and all(isinstance(a, dict) for a in authorizations)
    ):
        raise MalformedBody("`authorizations` is not a list of objects")
    urls = scope.get("response_urls")
    if urls is not None and not (isinstance(urls, list) and all(isinstance(u, dict) for u in urls)):
        raise MalformedBody("`response_urls` is not a list of objects")
    for name in _NESTED:
        nested = scope.get(name)
        if nested is None:
            continue
        if not isinstance(nested, dict):
            raise MalformedBody(f"`{name}` is not an object")
        if depth < 2:  # Bolt looks two levels down at most (event.message.user)
            _check_scope(nested, depth + 1)
    if isinstance(authorizations, list) and authorizations and depth < 2:
        _check_scope(authorizations[0], depth + 1)
