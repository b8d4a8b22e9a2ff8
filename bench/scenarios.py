"""The benchmark's scenarios: many streams at once (a-d) and one deep conversation (e).

Each scenario gets fresh fakes, a fresh database and a fresh bot process, so peak RSS and CPU time
belong to that scenario alone.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
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
from bench.fakes import BenchSlack, answer_pieces, new_fakes, slack_limits, streamed_reply
from bench.observe import ThreadView, first_token_at, last_token_at, thread_done, threads, upstream_by_tag
from bench.stats import LoopLag, summary_ms
from tests.fakes.aimlapi import FakeAimlApi, Reply

SLACK_UPDATES_PER_MINUTE = 50.0  # Slack's Tier 3
# (c)-(e): the same fake, 12x faster. At 50 a minute one workspace needs 4 minutes just for the final
# edits of 200 replies; these scenarios measure the bot's own costs, so they get a bigger budget
# (and the bot is told, keeping its usual 90 % of Slack's rate). `--real-limits` runs them at 50.
SCALED_UPDATES_PER_MINUTE = 600.0


def scaled_env() -> dict[str, str]:
    return {"SLACK_EDITS_PER_MINUTE": str(SCALED_UPDATES_PER_MINUTE * 0.9)}


@dataclass(frozen=True)
class StreamScenario:
    """`conversations` new threads (one mention each), answered by the same stream."""

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
    slack_updates_per_minute: float = SLACK_UPDATES_PER_MINUTE
    bot_env: Mapping[str, str] = field(default_factory=dict)

    def timeout(self) -> float:
        """Generous bound: streaming time plus 1.5x the time the edit budget needs for final edits."""
        pieces = -(-self.words // self.words_per_piece)
        stream = self.ramp_seconds + self.ttft + pieces * self.chunk_interval
        per_team = -(-self.conversations // self.teams)
        finals = per_team / (0.9 * self.slack_updates_per_minute) * 60.0
        return stream + 1.5 * finals + 10.0


@dataclass(frozen=True)
class DeepScenario:
    """One thread, `turns` questions deep, each asked once the previous answer is final."""

    key: str
    title: str
    turns: int = 40
    words: int = 300
    words_per_piece: int = 10
    ttft: float = 0.05
    chunk_interval: float = 0.01
    slack_updates_per_minute: float = SCALED_UPDATES_PER_MINUTE
    bot_env: Mapping[str, str] = field(
        default_factory=lambda: {
            **scaled_env(),
            # A window small enough that trimming starts part way through (about turn 25).
            "LLM_CONTEXT_WINDOW": "16000",
            "LLM_MAX_OUTPUT_TOKENS": "2048",
        }
    )
    turn_timeout: float = 20.0
    # Turns start at least this far apart: the bot posts one message per turn into one channel, and
    # Slack allows about one chat.postMessage a second per channel (a faster "user" measures 429s).
    pace_seconds: float = 1.1


Scenario = StreamScenario | DeepScenario

SCENARIOS: dict[str, Scenario] = {
    "a": StreamScenario("a", "one stream", 1),
    "b": StreamScenario("b", "50 concurrent, 1 workspace", 50, ramp_seconds=1.0),
    "c": StreamScenario(
        "c",
        "200 concurrent, 1 workspace",
        200,
        ramp_seconds=2.0,
        slack_updates_per_minute=SCALED_UPDATES_PER_MINUTE,
        bot_env=scaled_env(),
    ),
    "d": StreamScenario(
        "d",
        "500 mentions/10 s, 5 workspaces",
        500,
        words=12,
        ttft=0.2,
        teams=5,
        channels_per_team=20,
        ramp_seconds=10.0,
        slack_updates_per_minute=SCALED_UPDATES_PER_MINUTE,
        bot_env=scaled_env(),
    ),
    "e": DeepScenario("e", "one thread, 40 turns deep"),
}


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


async def run_stream(s: StreamScenario, db: str, logs: Path | None = None) -> dict[str, Any]:
    slack, aiml = new_fakes()
    async with slack, aiml:
        slack.limits.update(slack_limits(s.slack_updates_per_minute))
        pieces = answer_pieces(s.words, s.words_per_piece)
        expected = "".join(pieces)
        aiml.default = streamed_reply(pieces, ttft=s.ttft, chunk_interval=s.chunk_interval)
        convs = plan_conversations(s, slack)
        with tempfile.TemporaryDirectory(prefix=f"bench-{s.key}-") as tmp:
            workdir = Path(tmp)
            async with fresh_database(db, workdir) as db_url:
                env = bot_environment(db_url, slack.api_url, aiml.base_url, s.bot_env)
                async with running_bot(workdir, env) as bot, DriverThread() as driver:
                    sender = await driver.call(new_sender(bot.url))
                    lag, meter = LoopLag(), CpuMeter(bot)
                    try:
                        await warm_up(driver, sender, slack, aiml)
                        calls_from = len(slack.calls)
                        lag.start()
                        meter.start()
                        mentions = ramp(
                            convs,
                            s.ramp_seconds,
                            lambda c: sender.send(c, app_mention(c, question(c), c.root_ts)),
                        )
                        await driver.call(mentions)
                        pending = {c.index: c for c in convs}

                        def all_done() -> bool:
                            for c in list(pending.values()):
                                if thread_done(slack, c.channel, c.root_ts):
                                    del pending[c.index]
                            return not pending

                        in_time = await wait_until(all_done, s.timeout(), period=0.1)
                        cpu = meter.stop()
                        rss = bot.peak_rss_mb()
                    finally:
                        lag_ms = await lag.stop()
                        await driver.call(sender.aclose())
                result = _stream_result(s, slack, aiml, convs, expected, calls_from)
                result.update(
                    finished_in_time=in_time,
                    bot_peak_rss_mb=round(rss, 1),
                    bench_loop_lag_ms=lag_ms,
                    **process_report(
                        bot, cpu, result["complete_replies"], logs and logs / f"{s.key}-bot.log"
                    ),
                )
                return result


def _stream_result(
    s: StreamScenario,
    slack: BenchSlack,
    aiml: FakeAimlApi,
    convs: list[Conversation],
    expected: str,
    calls_from: int,
) -> dict[str, Any]:
    views = threads(slack, {c.channel for c in convs})
    ups = upstream_by_tag(aiml)
    ack, placeholder, overhead, tail, total, edits = [], [], [], [], [], []
    complete = 0
    for c in convs:
        view = views.get((c.channel, c.root_ts), ThreadView())
        up = ups.get(c.tag)
        ack.append(c.ack_seconds)
        placeholder.append(view.placeholder_at - c.sent_at)
        overhead.append(view.first_text_at - first_token_at(up))
        tail.append(view.final_at - last_token_at(up))
        total.append(view.final_at - c.sent_at)
        edits.append(view.edits)
        complete += view.done and view.answer == expected
    finals = [c.sent_at + t for c, t in zip(convs, total, strict=True) if t == t]
    span = (max(finals) - min(c.sent_at for c in convs)) if finals else float("nan")
    rejected = Counter(call.method for call in slack.calls[calls_from:] if call.status == 429)
    return {
        "title": s.title,
        "conversations": s.conversations,
        "workspaces": s.teams,
        "channels": len({c.channel for c in convs}),
        "ramp_seconds": s.ramp_seconds,
        "stream": {
            "words": s.words,
            "chunks": len(answer_pieces(s.words, s.words_per_piece)),
            "ttft_s": s.ttft,
            "chunk_interval_s": s.chunk_interval,
        },
        "slack_chat_update_per_minute": s.slack_updates_per_minute,
        "bot_env": dict(s.bot_env),
        "ack_ms": summary_ms(ack),
        "ack_non_200": sum(1 for c in convs if c.ack_status != 200),
        "placeholder_ms": summary_ms(placeholder),
        "stream_overhead_ms": summary_ms(overhead),
        "last_token_to_final_ms": summary_ms(tail),
        "event_to_final_ms": summary_ms(total),
        "edits_per_reply": {"mean": round(sum(edits) / len(edits), 2), "max": max(edits)},
        "slack_429s": sum(rejected.values()),
        "slack_429s_by_method": dict(rejected),
        "complete_replies": complete,
        "complete_pct": round(100.0 * complete / len(convs), 2),
        "duration_s": round(span, 2),
        "replies_per_second": round(complete / span, 2) if span == span and span > 0 else None,
    }
