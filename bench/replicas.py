"""Scenario (f): replicas on one PostgreSQL database behind a round-robin balancer, one killed halfway.

The replicas, the balancer and the socket look-up that tells which replica streams which reply are
the tests' (tests/replicas.py). The balancer runs in the driver's thread, beside the sender, so the
fakes' busy loop does not delay the acknowledgements it forwards. A reply is done when it is final
(complete) or carries the interrupted note (finished by another replica after the kill).
"""

from __future__ import annotations

import asyncio
import math
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.botproc import BotProcess, CpuMeter, bot_environment, fresh_database
from bench.calls import calls_by_method, first_status_at, message_index
from bench.driver import Conversation, DriverThread, EventSender, app_mention, new_sender, ramp, wait_until
from bench.fakes import BenchSlack, SlackModel, answer_pieces, new_fakes, streamed_reply
from bench.observe import MessageView, threads, upstream_by_tag
from bench.scenarios import WARM_CHANNEL, ReplicaScenario, question
from bench.stats import Span, spans_ms, summary_ms
from bot.slack.recovery import NOTE_RESTARTED
from tests.fakes.aimlapi import FakeAimlApi, RecordedRequest, Reply
from tests.replicas import Balancer, running_replicas, socket_owners

NAN = float("nan")


@dataclass(frozen=True)
class Kill:
    replica: int
    at: float  # time.monotonic()
    in_flight: frozenset[str]  # tags of the replies whose model call the killed replica held
    left: frozenset[str]  # those, and the replies not final whose event the killed replica took


def plan(s: ReplicaScenario, slack: BenchSlack) -> list[Conversation]:
    """One Conversation per reply: single-turn threads, then the ordered threads' turns (`turn` in
    `extra`); channels spread over the workspaces.

    The workspace changes once per round of the balancer, so every replica, the killed one too,
    serves every workspace. With `i % teams` (teams as many as replicas) the killed replica had
    served one workspace alone: its 45-47 notes then needed that workspace's whole chat.update
    rate, about 50 a minute, for 56 s after they were found (kill to last note 52-69 s)."""
    singles = s.conversations - s.ordered_threads * s.turns_per_thread
    replies: list[Conversation] = []
    for i in range(singles + s.ordered_threads):
        team = f"T{(i // s.replicas) % s.teams + 1}"
        channel = f"C{team[1:]}F{i:04d}"
        slack.channel_team[channel] = team
        root = f"1800000000.{i + 1:06d}"
        turns = 1 if i < singles else s.turns_per_thread
        for turn in range(turns):
            conv = Conversation(len(replies), team, channel, root, f"[q:f{i}t{turn}]")
            conv.extra["turn"] = turn
            replies.append(conv)
    return replies


def _event(c: Conversation) -> dict[str, Any]:
    turn = int(c.extra["turn"])
    ts = c.root_ts if turn == 0 else f"{c.root_ts[:-3]}{900 + turn:03d}"
    return app_mention(c, question(c), ts, None if turn == 0 else c.root_ts)


async def send_all(s: ReplicaScenario, replies: list[Conversation], sender: EventSender) -> None:
    """The first turns over the ramp; each later turn `turn_gap_seconds` after the one before."""
    firsts = [c for c in replies if c.extra["turn"] == 0]
    later = [c for c in replies if c.extra["turn"] > 0]

    # `ramp` sends the n-th first turn at n * step; a later turn follows its own thread's first.
    started = time.monotonic()
    step = s.ramp_seconds / len(firsts) if firsts else 0.0
    place = {c.root_ts: n for n, c in enumerate(firsts)}

    async def in_a_while(c: Conversation) -> None:
        due = started + place[c.root_ts] * step + s.turn_gap_seconds * int(c.extra["turn"])
        await asyncio.sleep(due - time.monotonic())
        await sender.send(c, _event(c))

    await asyncio.gather(
        ramp(firsts, s.ramp_seconds, lambda c: sender.send(c, _event(c))), *(in_a_while(c) for c in later)
    )


def reply_message(slack: BenchSlack, c: Conversation) -> Any:
    """The bot's message answering the turn (the thread's n-th bot message, n its place in the order
    the turns were answered: `admitted_at`)."""
    mine = [m for m in slack.thread(c.channel, c.root_ts) if m.bot_id == slack.bot_id]
    n = _answered_as(c)
    return mine[n] if len(mine) > n else None


def _answered_as(c: Conversation) -> int:
    return int(c.extra.get("answered_as", c.extra["turn"]))


def admitted_at(replies: list[Conversation], aiml: FakeAimlApi) -> None:
    """Note each turn's place in its thread's answers: the order of its model call (one at a time,
    in the order the bot admitted them). A turn whose event reached a busy replica may be admitted
    after the next one sent, 0.3 s later: the thread's n-th answer is then the later turn's (mapping
    by the order sent counted two such turns of the killed replica as "interrupted not on the killed
    replica" in one run). Turns without a call yet come after, in the order sent."""
    ups = upstream_by_tag(aiml)
    threads_: dict[str, list[Conversation]] = {}
    for c in replies:
        threads_.setdefault(c.root_ts, []).append(c)
    for turns in threads_.values():

        def when(c: Conversation) -> tuple[float, int]:
            call = ups.get(c.tag)
            return (call.received_at if call is not None else math.inf, int(c.extra["turn"]))

        for n, c in enumerate(sorted(turns, key=when)):
            c.extra["answered_as"] = n


def outcome(slack: BenchSlack, c: Conversation, expected: str) -> str:
    m = reply_message(slack, c)
    if m is None:
        return "missing"
    if NOTE_RESTARTED in m.context:
        return "interrupted" if expected.startswith(m.markdown.rstrip()) else "interrupted, text lost"
    if m.context:
        return "complete" if m.markdown == expected else "wrong text"
    return "unfinished"


async def warm_up(
    s: ReplicaScenario, driver: DriverThread, sender: EventSender, slack: BenchSlack, aiml: FakeAimlApi
) -> None:
    """One unmeasured reply per replica (round robin: each lands on the next one)."""
    for i in range(s.replicas):
        conv = Conversation(-1 - i, "T1", WARM_CHANNEL, f"1799999999.{i + 1:06d}", f"[q:warm{i}]")
        aiml.enqueue(Reply(content="Ready.", ttft=0.0))
        await driver.call(sender.send(conv, app_mention(conv, question(conv), conv.root_ts)))
    done = lambda: len([m for m in slack.messages(WARM_CHANNEL) if m.context]) >= s.replicas  # noqa: E731
    await wait_until(done, 20.0, period=0.02)


async def run_replicas(s: ReplicaScenario, model: SlackModel, logs: Path | None = None) -> dict[str, Any]:
    slack, aiml = new_fakes(model)
    async with slack, aiml:
        pieces = answer_pieces(s.words, s.words_per_piece)
        expected = "".join(pieces)
        aiml.default = streamed_reply(pieces, ttft=s.ttft, chunk_interval=s.chunk_interval)
        replies = plan(s, slack)
        with tempfile.TemporaryDirectory(prefix=f"bench-{s.key}-") as tmp:
            workdir = Path(tmp)
            async with fresh_database("postgres", workdir) as db_url:
                env = bot_environment(db_url, slack.api_url, aiml.base_url, s.environment(model))
                started = time.monotonic()
                async with running_replicas(s.replicas, env, workdir, show_logs=False) as bots:
                    start_s = time.monotonic() - started
                    async with DriverThread() as driver:
                        balancer = Balancer([b.port for b in bots])
                        await driver.call(balancer.start())
                        sender = await driver.call(new_sender(balancer.url))
                        try:
                            await warm_up(s, driver, sender, slack, aiml)
                            calls_from, requests_from = len(slack.calls), len(aiml.chat_requests)
                            meters = [CpuMeter(b) for b in bots]
                            for meter in meters:
                                meter.start()
                            sending = asyncio.ensure_future(driver.call(send_all(s, replies, sender)))
                            total_chunks = len(replies) * len(pieces)

                            def halfway() -> bool:
                                sent = sum(len(r.content_sent_at) for r in aiml.chat_requests[requests_from:])
                                return sent >= s.kill_at * total_chunks

                            await wait_until(halfway, s.timeout(model), period=0.02)
                            cpu = {s.victim: meters[s.victim].stop()}
                            rss = {s.victim: bots[s.victim].peak_rss_mb()}
                            took = {c.tag for c in replies if _took(balancer, s.victim, c)}
                            admitted_at(replies, aiml)
                            unfinished = {c.tag for c in replies if outcome(slack, c, expected) != "complete"}
                            kill = _kill(s.victim, bots, aiml, requests_from, took & unfinished)
                            await sending

                            def all_done() -> bool:
                                return all(
                                    outcome(slack, c, expected) != "unfinished" for c in replies
                                ) and all(reply_message(slack, c) is not None for c in replies)

                            await wait_until(all_done, s.timeout(model), period=0.1)
                            admitted_at(replies, aiml)
                            waited_until = time.monotonic()
                            for i, meter in enumerate(meters):
                                if i != s.victim:
                                    cpu[i], rss[i] = meter.stop(), bots[i].peak_rss_mb()
                        finally:
                            await driver.call(sender.aclose())
                            await driver.call(balancer.stop())
                result = _result(s, model, slack, aiml, replies, expected, calls_from, waited_until, kill)
                result["replicas_started_in_s"] = round(start_s, 1)
                result["balancer"] = {
                    "served_by_replica": dict(Counter(x.replica for x in balancer.served)),
                    "refused": len(balancer.refused),
                }
                # Which replica took the event of each reply that is not done.
                for tag, shown in result["not_done"].items():
                    to = [x.replica for x in balancer.served if tag.encode() in x.body]
                    result["not_done"][tag] = {"event_to_replica": to, "thread_shows": shown}
                result.update(_processes(s, bots, cpu, rss, logs, result["complete_replies"]))
                return result


def _took(balancer: Balancer, replica: int, c: Conversation) -> bool:
    """The balancer gave the event of reply `c` to `replica`."""
    return any(x.replica == replica and c.tag.encode() in x.body for x in list(balancer.served))


def _kill(
    victim: int, bots: list[BotProcess], aiml: FakeAimlApi, requests_from: int, pending: set[str]
) -> Kill:
    """SIGKILL `victim`, after noting which open model calls were its (by their client socket);
    `pending`: the replies not final whose events it took (streaming, queued, or waiting for Slack)."""
    owners = socket_owners([b.pid for b in bots])
    open_calls = [r for r in aiml.chat_requests[requests_from:] if not r.done.is_set()]
    mine = [r for r in open_calls if owners.get(r.client_port or 0) == bots[victim].pid]
    tags = frozenset(tag for tag, r in upstream_by_tag(aiml).items() if any(r is m for m in mine))
    bots[victim].process.kill()
    return Kill(victim, time.monotonic(), tags, tags | pending)


def _result(
    s: ReplicaScenario,
    model: SlackModel,
    slack: BenchSlack,
    aiml: FakeAimlApi,
    replies: list[Conversation],
    expected: str,
    calls_from: int,
    deadline: float,
    kill: Kill,
) -> dict[str, Any]:
    channels = {c.channel for c in replies}
    views = threads(slack, channels)
    calls = slack.calls[calls_from:]
    status_at = first_status_at(calls, message_index(m for ch in channels for m in slack.messages(ch)))
    ack, shown, first_text, final, recovered = [], [], [], [], []
    outcomes: Counter[str] = Counter()
    for c in replies:
        turn = _answered_as(c)
        view = views.get((c.channel, c.root_ts))
        msgs = sorted(view.messages, key=lambda m: m.ts) if view else []
        m = msgs[turn] if len(msgs) > turn else MessageView("", "", False)
        status = status_at.get((c.channel, c.root_ts), NAN) if turn == 0 else NAN
        seen = min((t for t in (m.posted_at, status) if not math.isnan(t)), default=NAN)
        ack.append(Span(c.sent_at, c.acked_at, deadline))
        shown.append(Span(c.sent_at, seen, deadline))
        first_text.append(Span(c.sent_at, m.first_text_at, deadline))
        final.append(Span(c.sent_at, m.last_ok_at if m.final else NAN, deadline))
        result = outcome(slack, c, expected)
        outcomes[result] += 1
        if result.startswith("interrupted"):
            recovered.append(m.last_ok_at - kill.at)
    done = outcomes["complete"] + outcomes["interrupted"]
    # What the thread of each reply that is not done shows: (ts, answer start, notes, still streaming).
    not_done = {
        c.tag: [
            (m.ts, m.markdown[:30], m.context[-60:], m.streaming)
            for m in slack.thread(c.channel, c.root_ts)
            if m.bot_id == slack.bot_id
        ]
        for c in replies
        if outcome(slack, c, expected) not in ("complete", "interrupted")
    }
    rejected = Counter(call.method for call in calls if call.status == 429)
    return {
        "title": s.title,
        "streaming": s.streaming or "default",
        "conversations": len(replies),
        "replicas": s.replicas,
        "workspaces": s.teams,
        "ordered_threads": s.ordered_threads,
        "turns_per_thread": s.turns_per_thread,
        "stream": {"words": s.words, "ttft_s": s.ttft, "chunk_interval_s": s.chunk_interval},
        "slack": model.label,
        "slack_chat_update_per_minute": model.updates_per_minute,
        "bot_env": s.environment(model),
        "outcomes": dict(outcomes),
        "complete_replies": done,
        "complete_pct": round(100.0 * done / len(replies), 2),
        "killed": {
            "replica": kill.replica,
            "streaming_at_kill": len(kill.in_flight),
            "left_with_killed": len(kill.left),
            "interrupted_replies": outcomes["interrupted"] + outcomes["interrupted, text lost"],
            # Turns still waiting in the killed replica's line: another replica answers them whole.
            "handed_off_complete": sum(
                1 for c in replies if c.tag in kill.left and outcome(slack, c, expected) == "complete"
            ),
            "interrupted_not_on_killed": sum(
                1
                for c in replies
                if outcome(slack, c, expected).startswith("interrupted") and c.tag not in kill.left
            ),
            "kill_to_note_s": summary_ms(recovered) if recovered else None,
        },
        "not_done": dict(list(not_done.items())[:40]),
        "order": _order(replies, aiml),
        "ack_ms": spans_ms(ack),
        "ack_non_200": sum(1 for c in replies if c.ack_status != 200),
        "placeholder_or_status_ms": spans_ms(shown),
        "first_text_ms": spans_ms(first_text),
        "event_to_final_ms": spans_ms(final),
        "slack_calls_by_method": calls_by_method(calls),
        "slack_429s": sum(rejected.values()),
        "slack_429s_by_method": dict(rejected),
    }


def _order(replies: list[Conversation], aiml: FakeAimlApi) -> dict[str, Any]:
    """Per ordered thread: its turns' model calls came one at a time (each after the previous
    call's last chunk), each with every earlier turn's answer in its history: the turns were
    answered strictly in the order they were admitted (the bot's promise). `sent_order_kept`: also
    in the order the bench sent them, 0.3 s apart; a turn whose event reached a busy replica can be
    admitted after the next one, which then runs first (information, not a target)."""
    ups = upstream_by_tag(aiml)
    threads_: dict[str, list[Conversation]] = {}
    for c in replies:
        threads_.setdefault(c.root_ts, []).append(c)
    ordered = {root: turns for root, turns in threads_.items() if len(turns) > 1}
    kept, sent_kept, broken = 0, 0, {}
    for root, turns in ordered.items():
        calls = [ups.get(c.tag) for c in sorted(turns, key=lambda c: int(c.extra["turn"]))]
        ok = all(call is not None for call in calls)
        made = sorted((call for call in calls if call is not None), key=lambda call: call.received_at)
        for n in range(1, len(made)):
            prev, call = made[n - 1], made[n]
            after = not prev.content_sent_at or call.received_at >= prev.content_sent_at[-1]
            ok = ok and after and _answers_in(call) >= n
        kept += ok
        sent_kept += ok and made == calls
        if not ok:
            # Per turn: when its model call came (s after the thread's first), when its last chunk
            # left, and how many earlier answers its history held; None: no call.
            first = min((c.received_at for c in calls if c is not None), default=0.0)
            broken[root] = [
                None
                if c is None
                else (
                    round(c.received_at - first, 2),
                    round(c.content_sent_at[-1] - first, 2) if c.content_sent_at else None,
                    _answers_in(c),
                )
                for c in calls
            ]
    return {
        "threads": len(ordered),
        "kept": kept,
        "sent_order_kept": sent_kept,
        "broken": dict(list(broken.items())[:5]),
    }


def _answers_in(call: RecordedRequest) -> int:
    body = call.json if isinstance(call.json, dict) else {}
    return sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")


def _processes(
    s: ReplicaScenario,
    bots: list[BotProcess],
    cpu: dict[int, dict[str, float]],
    rss: dict[int, float],
    logs: Path | None,
    replies: int,
) -> dict[str, Any]:
    per_replica: list[dict[str, Any]] = []
    for i, bot in enumerate(bots):
        scan = bot.scan_log()
        kept = None
        if logs is not None:
            kept = logs / f"{s.run_key.replace('/', '-')}-replica{i}.log"
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bot.log_path, kept)
        per_replica.append(
            {
                "replica": i,
                "killed": i == s.victim,
                "cpu_seconds": cpu[i]["bot_s"],
                "peak_rss_mb": round(rss[i], 1),
                "exit_code": bot.process.returncode,
                "errors": {"count": scan.error_count, "first": scan.errors},
                "warnings": scan.warning_count,
                "log": None if kept is None else str(kept),
            }
        )
    survivors = [p for p in per_replica if not p["killed"]]
    total_cpu = sum(p["cpu_seconds"] for p in per_replica)
    return {
        "per_replica": per_replica,
        "bot_cpu_seconds": round(total_cpu, 2),
        "bot_cpu_seconds_per_reply": round(total_cpu / replies, 4) if replies else None,
        "bot_peak_rss_mb": max(p["peak_rss_mb"] for p in per_replica),
        "cpu_seconds": cpu[next(i for i in range(len(bots)) if i != s.victim)],
        "errors": {
            "count": sum(p["errors"]["count"] for p in survivors),
            "first": [e for p in survivors for e in p["errors"]["first"]][:5],
        },
        # The survivors' exit codes (the killed one's is -9 by design).
        "bot_exit_code": next((p["exit_code"] for p in survivors if p["exit_code"] != 0), 0),
    }
