"""The test fakes, set up the way the benchmark needs them: Slack's rate limits and latency.

Workspaces: the bot runs with ONE bot token, and `FakeSlackApi` attributes a call (and so its rate
limits) to the workspace of the token. Real Slack would see several installations with a token each,
and limits per workspace. To model that with one token, `BenchSlack` keys its rate limits by the
workspace the channel belongs to (`channel_team`, filled by the scenario: every channel lives in one
workspace); a channel it does not know counts for the token's workspace. The bot keys its own edit
budget by the event's `team_id`, so both sides agree on what a workspace is.

Visibility: `BenchSlack.shown` stamps every accepted post and edit when the fake's message state
changes, i.e. after the modelled latency, which is when a person in the thread could see it.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.botproc import AIMLAPI_KEY, BOT_TOKEN
from tests.fakes.aimlapi import FakeAimlApi, Reply
from tests.fakes.slack_api import FakeSlackApi, FakeUser, Handler, RateLimit
from tests.fakes.slack_rules import SLACK_LIMITS

# Slack's published limits (see /work/shared/reference/slack.md); per workspace unless said otherwise.
SLACK_UPDATES_PER_MINUTE = 50.0  # chat.update: Tier 3, about 50 a minute...
SLACK_UPDATE_BURST = 10  # ...with small bursts
SLACK_POST_PER_MINUTE = 60.0  # chat.postMessage: about one a second per channel...
SLACK_POST_BURST = 3  # ...with a burst
SLACK_TIER3 = RateLimit(50.0, burst=10)  # conversations.replies for an internal (self-hosted) app
SLACK_TIER4 = RateLimit(100.0, burst=20)  # users.info, auth.test
# assistant.threads.setStatus: "special", 600 a minute; Slack gives no burst. Modelled like the other
# methods here: a burst of what the bucket refills in 12 s (chat.update 10 at 50/min, Tier 4 20 at 100).
SLACK_STATUS = RateLimit(600.0, burst=120)
STREAM_METHODS = ("chat.startStream", "chat.appendStream", "chat.stopStream")

# Median latency of each method relative to chat.update's (the `--slack-latency` p50). Slack publishes
# no figures: writes that fan out to clients (posts) and history pages take a little longer than an
# edit, small reads less. Unlisted methods answer like chat.update.
LATENCY_FACTOR = {
    "chat.postMessage": 1.2,
    "conversations.replies": 1.5,
    "users.info": 0.7,
    "auth.test": 0.7,
    "assistant.threads.setStatus": 0.8,
}


@dataclass(frozen=True)
class SlackModel:
    """How the fake Slack behaves in a run: its rate limits and its latency.

    `update_speedup` 1 is Slack's own chat.update rate; `--quick` runs it 12x faster (and tells the
    bot, which keeps its usual 90 %), which is not what a workspace gets. Latency is lognormal per
    call: median `latency_p50_ms` x the method's factor, `latency_sigma` for the tail (0.5: p99 about
    3.2x the median), drawn from a generator seeded with `seed`; p50 0 turns latency off.
    """

    update_speedup: float = 1.0
    latency_p50_ms: float = 60.0
    latency_sigma: float = 0.5
    seed: int = 1

    @property
    def real_limits(self) -> bool:
        return self.update_speedup == 1.0

    @property
    def updates_per_minute(self) -> float:
        return SLACK_UPDATES_PER_MINUTE * self.update_speedup

    @property
    def label(self) -> str:
        return "Slack's limits" if self.real_limits else f"chat.update {self.update_speedup:g}x Slack's"

    def limits(self) -> dict[str, RateLimit]:
        return {
            "chat.update": RateLimit(self.updates_per_minute, burst=SLACK_UPDATE_BURST, per="team"),
            "chat.postMessage": RateLimit(SLACK_POST_PER_MINUTE, burst=SLACK_POST_BURST, per="channel"),
            "conversations.replies": SLACK_TIER3,
            "users.info": SLACK_TIER4,
            "auth.test": SLACK_TIER4,
            "assistant.threads.setStatus": SLACK_STATUS,
        }

    def bot_env(self) -> dict[str, str]:
        """The bot's own edit budget: its default (90 % of 50 a minute) unless the fake runs faster.

        One bot token serves every simulated workspace here, so users.info names the token's team for
        everyone and the bot would take the askers of other workspaces for Slack Connect guests: the
        external check is switched off (the look-up itself, for the guest check, still happens)."""
        env = {"ALLOW_EXTERNAL": "true"}
        if not self.real_limits:
            env["SLACK_EDITS_PER_MINUTE"] = str(0.9 * self.updates_per_minute)
        return env

    def latency(self) -> Callable[[str], float] | None:
        """A new sampler (method -> seconds) for one fake, or None when latency is off."""
        if self.latency_p50_ms <= 0:
            return None
        rng = random.Random(self.seed)
        mu = math.log(self.latency_p50_ms / 1000.0)

        def sample(method: str) -> float:
            return rng.lognormvariate(mu + math.log(LATENCY_FACTOR.get(method, 1.0)), self.latency_sigma)

        return sample

    def describe(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "real_limits": self.real_limits,
            "chat_update_per_minute": self.updates_per_minute,
            "chat_update_burst": SLACK_UPDATE_BURST,
            "chat_post_per_minute_per_channel": SLACK_POST_PER_MINUTE,
            # Per workspace; 50 statuses due within 1 s of 50 events spread over 1 s need a burst of
            # at least 31 at 600 a minute.
            "status_per_minute": SLACK_STATUS.per_minute,
            "status_burst": SLACK_STATUS.burst,
            # Native streaming keeps the fake's own limits (Tier 2 start/stop, Tier 4 append).
            "stream_limits": {
                method: {"per_minute": limit.per_minute, "burst": limit.burst}
                for method in STREAM_METHODS
                if (limit := SLACK_LIMITS.get(method)) is not None
            },
            "latency": {
                "p50_ms": self.latency_p50_ms,
                "sigma": self.latency_sigma,
                "seed": self.seed,
                "factor_by_method": LATENCY_FACTOR,
            }
            if self.latency_p50_ms > 0
            else None,
        }


@dataclass(frozen=True)
class Shown:
    """A bot message as it became visible: after an accepted post or edit, at `time`."""

    time: float
    method: str
    channel: str
    thread_ts: str  # the thread's root (the message's own ts for a top-level message)
    ts: str
    markdown: str


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
    """FakeSlackApi with rate limits per workspace of the channel and `shown` (see the module docstring)."""

    def __init__(self, model: SlackModel) -> None:
        super().__init__(bot_token=BOT_TOKEN, team_id="T1")
        self.channel_team: dict[str, str] = {}
        self.shown: list[Shown] = []
        self.limits.update(model.limits())
        self.latency = model.latency()
        # The driver's asker is an ordinary member: users.info answers for them (guests are refused).
        self.users["U1"] = FakeUser(real_name="Bench User")
        # Native streaming is the fake's own (by name, once it serves it): stamp what each call shows.
        for method in STREAM_METHODS:
            handler = self._handlers.get(method)
            if handler is not None:
                self.route(method, self._stamping(method, handler))

    def _stamping(self, method: str, handler: Handler) -> Handler:
        async def stamped(params: dict[str, Any], team: str) -> dict[str, Any]:
            body = await handler(params, team)
            channel = str(body.get("channel") or params.get("channel") or "")
            ts = str(body.get("ts") or params.get("ts") or "")
            with contextlib.suppress(KeyError):  # no message to show (the fake keeps none for it)
                self._stamp(method, channel, ts)
            return body

        return stamped

    def _check_rate(self, method: str, team: str, params: dict[str, Any]) -> None:
        channel = str(params.get("channel") or params.get("channel_id") or "")
        super()._check_rate(method, self.channel_team.get(channel, team), params)

    async def _post_message(self, params: dict[str, Any], team: str) -> dict[str, Any]:
        body = await super()._post_message(params, team)
        self._stamp("chat.postMessage", str(body["channel"]), str(body["ts"]))
        return body

    async def _update(self, params: dict[str, Any], team: str) -> dict[str, Any]:
        body = await super()._update(params, team)
        self._stamp("chat.update", str(body["channel"]), str(body["ts"]))
        return body

    def _stamp(self, method: str, channel: str, ts: str) -> None:
        m = self.message(channel, ts)
        self.shown.append(Shown(time.monotonic(), method, channel, m.thread_ts or m.ts, m.ts, m.markdown))


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


def new_fakes(model: SlackModel) -> tuple[BenchSlack, FakeAimlApi]:
    return BenchSlack(model), FakeAimlApi(api_key=AIMLAPI_KEY)
