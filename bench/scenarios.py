"""The benchmark's scenarios: many streams at once (a-d) and one deep conversation (e).

Each scenario gets fresh fakes, a fresh database and a fresh bot process, so peak RSS and CPU time
belong to that scenario alone. Every reply is in every percentile: one that never got somewhere
counts at the time the bench stopped waiting for it, and is counted as "never" as well.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.botproc import BotProcess, CpuMeter, bot_environment, fresh_database, running_bot
from bench.driver import (
    Conversation,
    DriverThread,
    EventSender,
    app_mention,
    new_sender,
    ramp,
    wait_until,
)
from bench.fakes import BenchSlack, SlackModel, answer_pieces, new_fakes, streamed_reply
from bench.measure import stream_result
from bench.observe import thread_done
from bench.stats import LoopLag
from tests.fakes.aimlapi import FakeAimlApi, Reply
from tests.fakes.slack_rules import SLACK_LIMITS


@dataclass(frozen=True)
class StreamScenario:
    """`conversations` new threads (one mention each), answered by the same stream: all at once
    (spread over `ramp_seconds`), or `sequential`: each mention once the previous reply is final."""

    key: str
    title: str
    conversations: int
    words: int = 400  # answer length; one SSE chunk per `words_per_piece` words
    words_per_piece: int = 1
    ttft: float = 0.3
    chunk_interval: float = 0.02  # 50 chunks a second
    teams: int = 1
    channels_per_team: int = 0  # 0: one channel per conversation
    ramp_seconds: float = 0.0  # mentions are spread evenly over this time
    sequential: bool = False
    bot_env: Mapping[str, str] = field(default_factory=dict)
    streaming: str | None = None  # SLACK_STREAMING for the bot; None: the bot's default

    @property
    def run_key(self) -> str:
        """The key of this run's results: `b/auto` for (b) in auto mode, `c` in the default mode."""
        return f"{self.key}/{self.streaming}" if self.streaming else self.key

    def environment(self, model: SlackModel) -> dict[str, str]:
        mode = {"SLACK_STREAMING": self.streaming} if self.streaming else {}
        return {**model.bot_env(), **self.bot_env, **mode}

    def timeout(self, model: SlackModel) -> float:
        """Generous bound on the wait (for each reply when sequential): streaming time plus 1.5x the
        time the bot's budget needs for the final calls (one reply: and an edit a second). Finals are
        edits unless the mode is native, where they are chat.stopStream's (Tier 2, slower); auto can
        always fall back to edits."""
        pieces = -(-self.words // self.words_per_piece)
        stream = self.ttft + pieces * self.chunk_interval
        per_team = 1 if self.sequential else -(-self.conversations // self.teams)
        edits = per_team * (1 + (stream if self.sequential else 0))
        rate = model.updates_per_minute
        if self.streaming == "native":
            rate = min(rate, SLACK_LIMITS["chat.stopStream"].per_minute)
        budget = edits / (0.9 * rate) * 60.0
        return (0 if self.sequential else self.ramp_seconds) + stream + 1.5 * budget + 10.0


@dataclass(frozen=True)
class DeepScenario:
    """One thread, `turns` questions deep, each asked once the previous answer is final. The bot keeps
    its default context window, so the whole history is sent each turn and grows with it."""

    key: str
    title: str
    turns: int = 40
    words: int = 300
    words_per_piece: int = 10
    ttft: float = 0.05
    chunk_interval: float = 0.01
    bot_env: Mapping[str, str] = field(default_factory=dict)
    streaming: str | None = None
    turn_timeout: float = 30.0
    # Turns start at least this far apart: the bot posts one message per turn into one channel, and
    # Slack allows about one chat.postMessage a second per channel (a faster "user" measures 429s).
    pace_seconds: float = 1.1

    @property
    def run_key(self) -> str:
        return f"{self.key}/{self.streaming}" if self.streaming else self.key

    def environment(self, model: SlackModel) -> dict[str, str]:
        mode = {"SLACK_STREAMING": self.streaming} if self.streaming else {}
        return {**model.bot_env(), **self.bot_env, **mode}


@dataclass(frozen=True)
class ReplicaScenario:
    """`replicas` bot processes on one PostgreSQL database behind a round-robin balancer (bench/replicas.py):
    `conversations` replies at once over `teams` workspaces, `ordered_threads` of them threads of
    `turns_per_thread` turns (each turn lands on the next replica); replica `victim` is killed (SIGKILL)
    once the model has sent `kill_at` of every chunk. Its replies are finished by another replica."""

    key: str
    title: str
    conversations: int = 150
    replicas: int = 3
    teams: int = 3
    ordered_threads: int = 5
    turns_per_thread: int = 3
    words: int = 400
    words_per_piece: int = 1
    ttft: float = 0.3
    chunk_interval: float = 0.02
    ramp_seconds: float = 2.0
    kill_at: float = 0.5
    victim: int = 1
    turn_gap_seconds: float = 0.3  # between the turns of an ordered thread
    bot_env: Mapping[str, str] = field(default_factory=dict)
    streaming: str | None = None

    @property
    def run_key(self) -> str:
        return f"{self.key}/{self.streaming}" if self.streaming else self.key

    def environment(self, model: SlackModel) -> dict[str, str]:
        mode = {"SLACK_STREAMING": self.streaming} if self.streaming else {}
        return {**model.bot_env(), **self.bot_env, **mode}

    def timeout(self, model: SlackModel) -> float:
        """Streaming, the killed replica's leases running out (45 s, maintenance every 15 s), and
        1.5x the time every workspace's edit budget needs for the final edits, plus slack."""
        stream = self.ttft + self.words / self.words_per_piece * self.chunk_interval
        finals = self.conversations / self.teams / (0.9 * model.updates_per_minute) * 60.0
        return self.ramp_seconds + self.turns_per_thread * stream + 60.0 + 1.5 * finals + 15.0


Scenario = StreamScenario | DeepScenario | ReplicaScenario

SINGLE_REPLIES = 20  # (a): at least 20 (issue 9), so p99 is not the figure of one of a handful
QUICK_SINGLE_REPLIES = 5

SCENARIOS: dict[str, Scenario] = {
    # Each single reply in a workspace of its own: it starts with an idle workspace's edit budget, as
    # one reply does. Twenty back to back in one workspace would measure a workspace that is never idle
    # (about 9 edits a reply against 50 a minute), which is what (b) and (c) are for.
    "a": StreamScenario(
        "a", f"{SINGLE_REPLIES} single streams", SINGLE_REPLIES, teams=SINGLE_REPLIES, sequential=True
    ),
    "b": StreamScenario("b", "50 concurrent, 1 workspace", 50, ramp_seconds=1.0),
    "c": StreamScenario("c", "200 concurrent, 1 workspace", 200, ramp_seconds=2.0),
    "d": StreamScenario(
        "d",
        "500 mentions/10 s, 5 workspaces",
        500,
        words=12,
        ttft=0.2,
        teams=5,
        channels_per_team=20,
        ramp_seconds=10.0,
    ),
    "e": DeepScenario("e", "one thread, 40 turns deep"),
    "f": ReplicaScenario("f", "150 concurrent, 3 workspaces, 3 replicas, one killed"),
}


# SLACK_STREAMING's settings. (a) and (b) run in each of them by default, side by side; the others
# in the bot's default mode (auto), unless `--mode` asks for others.
MODES = ("edits", "native", "auto")
DEFAULT_MODE = "auto"
EVERY_MODE = frozenset({"a", "b"})


def in_modes(scenarios: list[Scenario], modes: list[str] | None) -> list[Scenario]:
    """Each scenario once per mode: (a) and (b) in every mode, the rest in the bot's default mode;
    `modes` given: every scenario in each of those."""
    runs: list[Scenario] = []
    for s in scenarios:
        chosen = modes if modes is not None else list(MODES) if s.key in EVERY_MODE else [None]
        runs += [dataclasses.replace(s, streaming=mode) for mode in chosen]
    return runs


def quick(scenario: Scenario) -> Scenario:
    """`--quick`: fewer single replies in (a) (the faster Slack is the `SlackModel`'s part)."""
    if isinstance(scenario, StreamScenario) and scenario.sequential:
        title = f"{QUICK_SINGLE_REPLIES} single streams"
        return dataclasses.replace(scenario, conversations=QUICK_SINGLE_REPLIES, title=title)
    if isinstance(scenario, ReplicaScenario):
        return quick_replicas(scenario)
    return scenario


def quick_replicas(s: ReplicaScenario) -> ReplicaScenario:
    """(f) small: 30 replies of 100 words (the kill still waits for the 45 s leases)."""
    title = "30 concurrent, 3 workspaces, 3 replicas, one killed"
    return dataclasses.replace(
        s, conversations=30, ordered_threads=3, words=100, ramp_seconds=0.5, title=title
    )


WARM_CHANNEL = "CWARMUP"


def question(conv: Conversation) -> str:
    return f"{conv.tag} please answer in about four hundred words"


async def warm_up(driver: DriverThread, sender: EventSender, slack: BenchSlack, aiml: FakeAimlApi) -> None:
    """One short, unmeasured reply first, as a bot in service has had: Bolt's auth.test, lazy imports,
    the connection pools and SQLAlchemy's statement cache are warm before the clock starts."""
    conv = Conversation(-1, "T1", WARM_CHANNEL, "1799999999.000001", "[q:warmup]")
    aiml.enqueue(Reply(content="Ready.", ttft=0.0))
    await driver.call(sender.send(conv, app_mention(conv, question(conv), conv.root_ts)))
    await wait_until(lambda: thread_done(slack, WARM_CHANNEL, conv.root_ts), 15.0, period=0.02)


def plan_conversations(s: StreamScenario, slack: BenchSlack) -> list[Conversation]:
    convs = []
    for i in range(s.conversations):
        team = f"T{i % s.teams + 1}"
        per_team = i // s.teams
        slot = per_team % s.channels_per_team if s.channels_per_team else per_team
        channel = f"C{team[1:]}X{slot:04d}"
        slack.channel_team[channel] = team
        convs.append(Conversation(i, team, channel, f"1800000000.{i + 1:06d}", f"[q:{s.key}{i}]"))
    return convs


def log_copy(logs: Path | None, s: Scenario) -> Path | None:
    """Where the run's bot log is kept: `b-auto-bot.log` for (b) in auto mode."""
    return None if logs is None else logs / f"{s.run_key.replace('/', '-')}-bot.log"


def process_report(
    bot: BotProcess, cpu: dict[str, float], replies: int, keep_log: Path | None
) -> dict[str, Any]:
    """CPU, exit code and what the bot logged; the log is copied to `keep_log` (the temp dir goes)."""
    scan = bot.scan_log()
    if keep_log is not None:
        keep_log.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bot.log_path, keep_log)
    return {
        "bot_log": None if keep_log is None else str(keep_log),
        "bot_cpu_seconds": cpu["bot_s"],
        "bot_cpu_seconds_per_reply": round(cpu["bot_s"] / replies, 4) if replies else None,
        "cpu_seconds": cpu,
        "bot_exit_code": bot.process.returncode,
        "errors": {"count": scan.error_count, "first": scan.errors},
        "warnings": {"count": scan.warning_count, "by_event": scan.warnings_by_event},
    }


async def run_stream(
    s: StreamScenario,
    db: str,
    model: SlackModel,
    logs: Path | None = None,
    streamed: asyncio.Event | None = None,
) -> dict[str, Any]:
    """One run of `s` against a fresh bot; `streamed` is set once the fake model has sent every
    reply's last chunk (what is left is Slack's pace), or when the run ends whatever happened."""
    try:
        return await _run_stream(s, db, model, logs, streamed or asyncio.Event())
    finally:
        if streamed is not None:
            streamed.set()


async def _run_stream(
    s: StreamScenario, db: str, model: SlackModel, logs: Path | None, streamed: asyncio.Event
) -> dict[str, Any]:
    slack, aiml = new_fakes(model)
    async with slack, aiml:
        pieces = answer_pieces(s.words, s.words_per_piece)
        aiml.default = streamed_reply(pieces, ttft=s.ttft, chunk_interval=s.chunk_interval)
        convs = plan_conversations(s, slack)
        with tempfile.TemporaryDirectory(prefix=f"bench-{s.key}-") as tmp:
            workdir = Path(tmp)
            async with fresh_database(db, workdir) as db_url:
                env = bot_environment(db_url, slack.api_url, aiml.base_url, s.environment(model))
                async with running_bot(workdir, env) as bot, DriverThread() as driver:
                    sender = await driver.call(new_sender(bot.url))
                    lag, meter = LoopLag(), CpuMeter(bot)
                    try:
                        await warm_up(driver, sender, slack, aiml)
                        calls_from = len(slack.calls)
                        lag.start()
                        meter.start()
                        if s.sequential:
                            deadlines = await _one_by_one(s, model, convs, driver, sender, slack)
                        else:
                            all_sent = functools.partial(_all_streamed, aiml, len(convs) * len(pieces))
                            deadlines = await _all_at_once(
                                s, model, convs, driver, sender, slack, all_sent, streamed
                            )
                        cpu = meter.stop()
                        rss = bot.peak_rss_mb()
                    finally:
                        lag_ms = await lag.stop()
                        await driver.call(sender.aclose())
                result = stream_result(s, model, slack, aiml, convs, pieces, calls_from, deadlines)
                log_file = log_copy(logs, s)
                result.update(
                    finished_in_time=all(thread_done(slack, c.channel, c.root_ts) for c in convs),
                    bot_peak_rss_mb=round(rss, 1),
                    bench_loop_lag_ms=lag_ms,
                    **process_report(bot, cpu, result["complete_replies"], log_file),
                )
                return result


def _all_streamed(aiml: FakeAimlApi, chunks: int) -> bool:
    return sum(len(r.content_sent_at) for r in aiml.chat_requests) >= chunks


async def _all_at_once(
    s: StreamScenario,
    model: SlackModel,
    convs: list[Conversation],
    driver: DriverThread,
    sender: EventSender,
    slack: BenchSlack,
    all_sent: Callable[[], bool],
    streamed: asyncio.Event,
) -> dict[int, float]:
    """Send every mention (over the ramp), wait for every reply; conversation -> when waiting ended."""
    mentions = ramp(convs, s.ramp_seconds, lambda c: sender.send(c, app_mention(c, question(c), c.root_ts)))
    await driver.call(mentions)
    pending = {c.index: c for c in convs}

    def all_done() -> bool:
        if not streamed.is_set() and all_sent():
            streamed.set()
        for c in list(pending.values()):
            if thread_done(slack, c.channel, c.root_ts):
                del pending[c.index]
        return not pending

    await wait_until(all_done, s.timeout(model), period=0.1)
    stopped = time.monotonic()
    return {c.index: stopped for c in convs}


async def _one_by_one(
    s: StreamScenario,
    model: SlackModel,
    convs: list[Conversation],
    driver: DriverThread,
    sender: EventSender,
    slack: BenchSlack,
) -> dict[int, float]:
    """Each mention once the previous reply is final (or was given up on); -> when waiting ended."""
    deadlines = {}
    for c in convs:
        await driver.call(sender.send(c, app_mention(c, question(c), c.root_ts)))
        done = functools.partial(thread_done, slack, c.channel, c.root_ts)
        await wait_until(done, s.timeout(model), period=0.02)
        deadlines[c.index] = time.monotonic()
    return deadlines
