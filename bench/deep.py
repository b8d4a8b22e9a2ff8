"""Scenario (e): one conversation many turns deep. Is the cost of a turn flat as history grows?

Two runs: the real bot process, timed from the fakes (event -> placeholder, -> upstream request,
-> final edit) with its CPU time per turn, and the bot in this process with a SQLAlchemy hook counting
SQL statements per turn (an N+1 in history loading would grow that count with the turn number).

The cost is the CPU per turn and the time to the upstream request (the work on the history before
the model is asked). The times to the placeholder and the final edit are reported, not judged: they
are mostly Slack's, its seeded latency draws (the same turns come out slow run after run) and the
wait for the workspace's edit budget. Over five runs of the same code their slope went from 0.1 to
3.1 ms/turn; the bot's CPU per turn stayed flat in each run that measured it (-0.04 to +0.04).
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event

from bench.botproc import CpuMeter, bot_environment, fresh_database, running_bot
from bench.driver import (
    Conversation,
    DriverThread,
    app_mention,
    new_sender,
    thread_message,
    wait_until,
)
from bench.fakes import SlackModel, answer_pieces, new_fakes, streamed_reply
from bench.observe import MessageView, thread_done, threads, upstream_by_tag, upstream_messages
from bench.scenarios import DeepScenario, log_copy, process_report, warm_up
from bench.stats import LoopLag, Span, slope, spans_ms

NAN = float("nan")
CHANNEL = "CDEEP1"


def _turn_ts(turn: int) -> str:
    return f"1800000000.{turn:06d}"


def _question(tag: str, turn: int) -> str:
    return f"{tag} turn {turn}: tell me more about the previous answer"


def _has_finals(slack: Any, root: str, count: int) -> bool:
    """The bot's first `count` replies in the thread are final (context block) or plain notes."""
    mine = [m for m in slack.thread(CHANNEL, root) if m.bot_id == slack.bot_id]
    return sum(1 for m in mine if m.context or not m.blocks) >= count


async def run_deep(s: DeepScenario, db: str, model: SlackModel, logs: Path | None = None) -> dict[str, Any]:
    slack, aiml = new_fakes(model)
    async with slack, aiml:
        pieces = answer_pieces(s.words, s.words_per_piece)
        expected = "".join(pieces)
        aiml.default = streamed_reply(pieces, ttft=s.ttft, chunk_interval=s.chunk_interval)
        root = _turn_ts(1)
        turns = [Conversation(n, "T1", CHANNEL, root, f"[q:{s.key}{n}]") for n in range(1, s.turns + 1)]
        slack.channel_team[CHANNEL] = "T1"
        with tempfile.TemporaryDirectory(prefix=f"bench-{s.key}-") as tmp:
            workdir = Path(tmp)
            async with fresh_database(db, workdir) as db_url:
                env = bot_environment(db_url, slack.api_url, aiml.base_url, s.environment(model))
                async with running_bot(workdir, env) as bot, DriverThread() as driver:
                    sender = await driver.call(new_sender(bot.url))
                    lag, meter = LoopLag(), CpuMeter(bot)
                    answered = 0
                    deadlines: dict[int, float] = {}  # turn -> when the bench stopped waiting for it
                    cpu_at: list[float] = []  # the bot's CPU seconds as each turn is sent, then at the end
                    try:
                        await warm_up(driver, sender, slack, aiml)
                        calls_from = len(slack.calls)
                        lag.start()
                        meter.start()
                        for conv in turns:
                            n = conv.index
                            text = _question(conv.tag, n)
                            if n == 1:
                                ev = app_mention(conv, text, root)
                            else:
                                ev = thread_message(conv, text, _turn_ts(n))
                            turn_started = time.monotonic()
                            cpu_at.append(bot.cpu_seconds())
                            await driver.call(sender.send(conv, ev))
                            answered_now = functools.partial(_has_finals, slack, root, n)
                            in_time = await wait_until(answered_now, s.turn_timeout, period=0.01)
                            deadlines[n] = time.monotonic()
                            if not in_time:
                                break
                            answered = n
                            await asyncio.sleep(max(0.0, turn_started + s.pace_seconds - time.monotonic()))
                        cpu_at.append(bot.cpu_seconds())
                        cpu = meter.stop()
                        rss = bot.peak_rss_mb()
                    finally:
                        lag_ms = await lag.stop()
                        await driver.call(sender.aclose())
                thread = threads(slack, [CHANNEL]).get((CHANNEL, root))
                messages = thread.messages if thread else []
                ups = upstream_by_tag(aiml)
                # A turn that timed out has no CPU of its own: its window would run to the end.
                rows = [_turn_row(conv, messages, ups, expected, cpu_at[: answered + 1]) for conv in turns]
                complete = sum(1 for r in rows if r["complete"])
                result = _deep_summary(s, model, rows, turns, messages, deadlines)
                result.update(
                    answered_turns=answered,
                    complete_replies=complete,
                    complete_pct=round(100.0 * complete / len(rows), 2),
                    slack_429s=sum(1 for c in slack.calls[calls_from:] if c.status == 429),
                    bot_peak_rss_mb=round(rss, 1),
                    bench_loop_lag_ms=lag_ms,
                    done=thread_done(slack, CHANNEL, root),
                    **process_report(bot, cpu, complete, log_copy(logs, s)),
                )
                return result


def _turn_row(
    conv: Conversation, messages: list[MessageView], ups: dict[str, Any], expected: str, cpu_at: list[float]
) -> dict[str, Any]:
    """One turn's timings; its CPU is the bot's from this turn's event to the next one's (clock ticks
    of 10 ms: one turn's figure is coarse, the slope over 40 of them is not)."""
    n = conv.index
    message = messages[n - 1] if len(messages) >= n else None
    up = ups.get(conv.tag)

    def ms(at: float) -> float | None:
        value = (at - conv.sent_at) * 1000.0
        return round(value, 1) if value == value else None

    return {
        "turn": n,
        "ack_ms": ms(conv.acked_at),
        "placeholder_ms": ms(message.posted_at) if message else None,
        "upstream_request_ms": ms(up.received_at) if up else None,
        "final_ms": ms(message.last_ok_at) if message and message.final else None,
        "cpu_ms": round((cpu_at[n] - cpu_at[n - 1]) * 1000.0, 1) if len(cpu_at) > n else None,
        "upstream_messages": upstream_messages(up) if up else None,
        "complete": bool(message and message.final and message.markdown == expected),
    }


def _deep_summary(
    s: DeepScenario,
    model: SlackModel,
    rows: list[dict[str, Any]],
    turns: list[Conversation],
    messages: list[MessageView],
    deadlines: dict[int, float],
) -> dict[str, Any]:
    """Per-turn rows, slopes, and summaries over every turn: one that was never asked (an earlier
    turn timed out) counts as never, at the turn timeout."""
    later = [r for r in rows if r["turn"] >= 2]  # turn 1 creates the conversation

    def trend(name: str) -> float | None:
        pairs = [(float(r["turn"]), float(r[name])) for r in later if r[name] is not None]
        value = slope([x for x, _ in pairs], [y for _, y in pairs])
        return None if value is None else round(value, 3)

    return {
        "title": s.title,
        "turns": s.turns,
        "stream": {"words": s.words, "chunks": len(answer_pieces(s.words, s.words_per_piece))},
        "slack": model.label,
        "slack_chat_update_per_minute": model.updates_per_minute,
        "bot_env": s.environment(model),
        "per_turn": rows,
        "ack_ms": spans_ms(_turn_spans(s, turns, deadlines, lambda c, _m: c.acked_at, messages)),
        "placeholder_ms": spans_ms(
            _turn_spans(s, turns, deadlines, lambda _c, m: m.posted_at if m else NAN, messages)
        ),
        "event_to_final_ms": spans_ms(
            _turn_spans(s, turns, deadlines, lambda _c, m: m.last_ok_at if m and m.final else NAN, messages)
        ),
        "slope_ms_per_turn": {
            "placeholder": trend("placeholder_ms"),
            "upstream_request": trend("upstream_request_ms"),
            "final": trend("final_ms"),
            "cpu": trend("cpu_ms"),
        },
    }


def _turn_spans(
    s: DeepScenario,
    turns: list[Conversation],
    deadlines: dict[int, float],
    end: Callable[[Conversation, MessageView | None], float],
    messages: list[MessageView],
) -> list[Span]:
    spans = []
    for conv in turns:
        n = conv.index
        if n not in deadlines:  # never asked: counts as never, at the turn timeout
            spans.append(Span(0.0, NAN, s.turn_timeout))
            continue
        message = messages[n - 1] if len(messages) >= n else None
        spans.append(Span(conv.sent_at, end(conv, message), deadlines[n]))
    return spans


# Tasks of the bot's own housekeeping (bot/app.py, bot/conversation/ledger.py, shared_order.py):
# not part of a turn.
BACKGROUND_TASKS = frozenset({"maintenance", "ledger-spool", "turn-places", "turn-adoption"})


class StatementCounter:
    """`before_cursor_execute` listener: a turn's statements by their first keyword."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.background = 0  # housekeeping statements, left out of the turns' counts

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # SQLAlchemy's async engine runs this hook inside the awaiting task: the housekeeping loop's
        # statements (every 15 s, whatever the turns do) are not a turn's cost.
        task = asyncio.current_task()
        if task is not None and task.get_name() in BACKGROUND_TASKS:
            self.background += 1
            return
        self.counts[statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"] += 1


async def sql_statements_per_turn(turns: int, db: str) -> list[dict[str, Any]]:
    """The bot in this process, answering `turns` turns of one thread; SQL statements of each turn."""
    from tests.fakes.aimlapi import FakeAimlApi
    from tests.fakes.slack_api import FakeSlackApi
    from tests.harness import make_settings, mention, message
    from tests.harness import running_bot as in_process_bot

    rows: list[dict[str, Any]] = []
    async with FakeSlackApi() as slack, FakeAimlApi(api_key="test-key") as aiml:
        aiml.default = streamed_reply(answer_pieces(300, 10), ttft=0.0, chunk_interval=0.0)
        # Only statements are counted here: Slack's pace is run_deep's. Under Slack's limits (one post a
        # second per channel, chat.update's) most turns drew a 429 and waited a second or two for it.
        slack.limits.clear()
        slack.latency = None
        with tempfile.TemporaryDirectory(prefix="bench-sql-") as tmp:
            async with fresh_database(db, Path(tmp)) as db_url:
                settings = make_settings(
                    db_url,
                    slack,
                    aiml,
                    stream_update_interval=0.05,
                    slack_edits_per_minute=6000.0,
                    slack_edit_burst=100,
                )
                async with in_process_bot(settings, slack) as bot:
                    assert bot.runtime.core is not None
                    counter = StatementCounter()
                    event.listen(bot.runtime.core.engine.sync_engine, "before_cursor_execute", counter)
                    root = _turn_ts(1)
                    for n in range(1, turns + 1):
                        counter.counts.clear()
                        started = time.monotonic()
                        text = f"turn {n}: go on"
                        if n == 1:
                            await bot.send(mention(text, root))
                        else:
                            await bot.send(message(text, _turn_ts(n), thread_ts=root))
                        await bot.idle(timeout=15.0)
                        counts = dict(counter.counts)
                        rows.append(
                            {
                                "turn": n,
                                "statements": sum(counts.values()),
                                "by_kind": counts,
                                "seconds": round(time.monotonic() - started, 3),
                            }
                        )
    return rows
