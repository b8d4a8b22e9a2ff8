"""What a failed Slack Web API call raises, and a short reason for the log (never a message body)."""

from __future__ import annotations

import aiohttp
from slack_sdk.errors import SlackApiError

# slack_sdk raises SlackApiError for `ok: false` and HTTP errors; the transport raises the others.
SLACK_CALL_ERRORS = (SlackApiError, aiohttp.ClientError, TimeoutError)


def call_error_reason(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error") or exc.response.status_code)
    return type(exc).__name__
