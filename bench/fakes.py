"""The test fakes, set up the way the benchmark needs them.

Workspaces: the bot runs with ONE bot token, and `FakeSlackApi` attributes a call (and so its rate
limits) to the workspace of the token. Real Slack would see several installations with a token each,
and limits per workspace. To model that with one token, `BenchSlack` keys its rate limits by the
workspace the channel belongs to (`channel_team`, filled by the scenario: every channel lives in one
workspace); a channel it does not know counts for the token's workspace. The bot keys its own edit
budget by the event's `team_id`, so both sides agree on what a workspace is.
"""

from __future__ import annotations

from typing import Any

from bench.botproc import AIMLAPI_KEY, BOT_TOKEN
from tests.fakes.aimlapi import FakeAimlApi, Reply
from tests.fakes.slack_api import FakeSlackApi, RateLimit

SLACK_UPDATE_BURST = 10  # chat.update: Tier 3, about 50 a minute per workspace, small bursts
SLACK_POST_PER_MINUTE = 60.0  # chat.postMessage: about one a second per channel...
SLACK_POST_BURST = 3  # ...with a burst

_WORDS = (
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "streaming",
    "tokens",
    "arrive",
    "in",
    "order",
    "and",
    "every",
    "reply",
    "is",
    "edited",
    "into",
    "Slack",
    "with",
    "care,",
    "so",
    "nothing",
    "gets",
    "lost",
    "between",
    "the",
    "model",
    "and",
    "the",
    "thread",
)


class BenchSlack(FakeSlackApi):
    """FakeSlackApi with rate limits per workspace of the channel (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(bot_token=BOT_TOKEN, team_id="T1")
        self.channel_team: dict[str, str] = {}

    def _check_rate(self, method: str, team: str, params: dict[str, Any]) -> None:
        channel = str(params.get("channel") or params.get("channel_id") or "")
        super()._check_rate(method, self.channel_team.get(channel, team), params)


def slack_limits(updates_per_minute: float) -> dict[str, RateLimit]:
    return {
        "chat.update": RateLimit(updates_per_minute, burst=SLACK_UPDATE_BURST, per="team"),
        "chat.postMessage": RateLimit(SLACK_POST_PER_MINUTE, burst=SLACK_POST_BURST, per="channel"),
    }


def answer_pieces(words: int, words_per_piece: int = 1) -> list[str]:
    """The streamed answer: `words` words, `words_per_piece` per SSE chunk, ending with a full stop."""
    tokens = [_WORDS[i % len(_WORDS)] for i in range(words)]
    tokens[0] = tokens[0].capitalize()
    pieces = []
    for start in range(0, words, words_per_piece):
        group = tokens[start : start + words_per_piece]
        lead = "" if start == 0 else " "
        pieces.append(lead + " ".join(group))
    pieces[-1] += "."
    return pieces


def streamed_reply(pieces: list[str], *, ttft: float, chunk_interval: float) -> Reply:
    return Reply(content=pieces, ttft=ttft, chunk_interval=chunk_interval, credits_used=1000)


def new_fakes() -> tuple[BenchSlack, FakeAimlApi]:
    return BenchSlack(), FakeAimlApi(api_key=AIMLAPI_KEY)
