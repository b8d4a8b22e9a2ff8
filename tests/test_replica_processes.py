"""Three real bot processes (`python -m bot run`) on one PostgreSQL database behind a round-robin
balancer (issue 12).

Each test starts its own replicas (tests/replicas.py) on a fresh database, with the fake Slack and
the fake AI/ML API in this process. PostgreSQL only: SQLite is one process's database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from bench.botproc import AIMLAPI_KEY
from bench.fakes import BenchSlack, SlackModel
from bench.observe import thread_done
from bot.slack.recovery import NOTE_RESTARTED
from tests.fakes.aimlapi import FakeAimlApi, RecordedRequest, Reply
from tests.harness import mention
from tests.replicas import ReplicaSet, replica_set

# Replicas share a PostgreSQL database: skipped with the suite's other PostgreSQL cases.
pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("_postgres_server")]
log = logging.getLogger(__name__)  # timings: `pytest --log-cli-level=INFO` shows them

# Slack's limits with chat.update 12x faster (bench --quick): the tests wait less for Slack's pace.
FAST_SLACK = SlackModel(update_speedup=12.0, latency_p50_ms=5.0)
BASE_ENV = {**FAST_SLACK.bot_env(), "SLACK_STREAMING": "edits", "STREAM_UPDATE_INTERVAL": "0.3"}
# The reply leases (30 s) and the maintenance period (10 s) are production's: recovery within 60 s.
RECOVERY_WITHIN = 60.0


@pytest.fixture
async def slack() -> AsyncIterator[BenchSlack]:
    fake = BenchSlack(FAST_SLACK)
    async with fake:
        yield fake


@pytest.fixture
async def aiml() -> AsyncIterator[FakeAimlApi]:
    async with FakeAimlApi(api_key=AIMLAPI_KEY) as fake:
        yield fake


async def until(condition: Any, within: float, what: str, bots: ReplicaSet | None = None) -> float:
    """Poll `condition()` until true; returns the seconds it took. Fails with the replicas' logs."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            logs = f"\n{bots.log_tails()}" if bots is not None else ""
            raise AssertionError(f"{what}: not within {within:g} s{logs}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def bot_messages(slack: BenchSlack, channel: str, root: str) -> list[Any]:
    return [m for m in slack.thread(channel, root) if m.bot_id == slack.bot_id]


async def scalar(bots: ReplicaSet, sql: str, **params: Any) -> Any:
    engine = create_async_engine(bots.database_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()
    finally:
        await engine.dispose()


async def test_three_replicas_start_in_seconds_and_the_balancer_skips_a_dead_one(
    slack: BenchSlack, aiml: FakeAimlApi, tmp_path: Path
) -> None:
    async with replica_set(3, slack, aiml, tmp_path, BASE_ENV) as bots:
        # Migrate once, then three processes side by side: a few seconds even on a busy machine.
        log.info("3 replicas up in %.1f s", bots.started_in)
        assert bots.started_in < 60.0
        for _ in range(6):
            assert (await bots.http.get("/healthz")).status_code == 200
        assert [s.replica for s in bots.balancer.served] == [0, 1, 2, 0, 1, 2]
        bots.kill(1)
        await bots.bots[1].process.wait()
        for _ in range(4):
            assert (await bots.http.get("/healthz")).status_code == 200
        assert 1 in bots.balancer.refused
        assert {s.replica for s in bots.balancer.served[6:]} == {0, 2}


async def test_replies_spread_over_replicas_all_complete_and_a_retried_event_is_answered_once(
    slack: BenchSlack, aiml: FakeAimlApi, tmp_path: Path
) -> None:
    aiml.default = Reply(content=["Spread ", "over ", "three ", "replicas."], ttft=0.1, chunk_interval=0.05)
    channels = [f"CSPREAD{i}" for i in range(9)]
    async with replica_set(3, slack, aiml, tmp_path, BASE_ENV) as bots:
        events = [
            mention(f"question {i}", f"1800000000.{i + 1:06d}", channel=c) for i, c in enumerate(channels)
        ]
        ids = [f"EvSPREAD{i}" for i in range(len(events))]
        statuses = await asyncio.gather(*(bots.send(e, event_id=i) for e, i in zip(events, ids, strict=True)))
        assert statuses == [200] * len(events)
        # Slack retries each event (the first ack was late, say): the retry lands on another replica.
        retried = await asyncio.gather(*(bots.send(e, event_id=i) for e, i in zip(events, ids, strict=True)))
        assert retried == [200] * len(events)
        assert {s.replica for s in bots.balancer.served} == {0, 1, 2}

        def all_done() -> bool:
            return all(thread_done(slack, e["channel"], e["ts"]) for e in events)

        await until(all_done, 30.0, "every reply final", bots)
        await asyncio.sleep(1.0)  # a duplicate answer would come about now
        for e in events:
            mine = bot_messages(slack, e["channel"], e["ts"])
            assert len(mine) == 1, (e["channel"], [m.markdown for m in mine])
            assert mine[0].markdown == "Spread over three replicas."
        assert len(aiml.chat_requests) == len(events)


async def test_the_digest_and_each_budget_alert_are_posted_once_across_replicas(
    slack: BenchSlack, aiml: FakeAimlApi, tmp_path: Path
) -> None:
    aiml.default = Reply(content="Spent a thousand credits.", credits_used=1000)
    env = {
        **BASE_ENV,
        # 00:00 has passed whenever the test runs: each replica's start-up catch-up tries yesterday's.
        "USAGE_DIGEST_CHANNEL": "CDIGEST",
        "USAGE_DIGEST_TIME": "00:00",
        "ADMIN_ALERT_CHANNEL": "CALERTS",
        "BUDGET_WORKSPACE_MONTHLY_CREDITS": "5000",
    }
    async with replica_set(3, slack, aiml, tmp_path, env) as bots:
        await until(lambda: bool(slack.messages("CDIGEST")), 30.0, "the digest", bots)
        # Five replies of 1,000 credits, one at a time, each on the next replica: 80 % after the
        # fourth, 100 % after the fifth; every replica checks the budget after its replies.
        for i in range(5):
            event = mention(f"spend {i}", f"1800000100.{i + 1:06d}", channel=f"CSPEND{i}")
            assert await bots.send(event) == 200
            await until(lambda e=event: thread_done(slack, e["channel"], e["ts"]), 20.0, f"reply {i}", bots)
        await until(lambda: len(slack.messages("CALERTS")) >= 2, 30.0, "80 % and 100 % alerts", bots)
        await asyncio.sleep(3.0)  # a second replica's copy would come about now
        assert len({s.replica for s in bots.balancer.served}) == 3
        digests = [m for m in slack.messages("CDIGEST") if not m.thread_ts]
        assert len(digests) == 1, [m.text for m in digests]
        alerts = [m.text for m in slack.messages("CALERTS")]
        assert len(alerts) == len(set(alerts)) == 2, alerts
        assert await scalar(bots, "SELECT count(*) FROM quota_alerts") == 3  # 80, 95 (folded), 100


async def _kill_mid_stream(
    slack: BenchSlack, aiml: FakeAimlApi, workdir: Path, *, after_words: int, streaming: str
) -> None:
    """Kill -9 the replica streaming a reply once `after_words` words left the model; another replica
    must finish it within RECOVERY_WITHIN: the text so far, the interrupted note, a usage row."""
    words = [f"word{i} " for i in range(400)]
    aiml.default = Reply(content=words, chunk_interval=0.25, credits_used=1000)  # 100 s of answer
    async with replica_set(3, slack, aiml, workdir, {**BASE_ENV, "SLACK_STREAMING": streaming}) as bots:
        event = mention("a long answer please", "1800000200.000001", channel="CKILL")
        assert await bots.send(event) == 200
        await until(lambda: len(aiml.chat_requests) == 1, 10.0, "the model call", bots)
        call: RecordedRequest = aiml.chat_requests[0]
        await until(lambda: len(call.content_sent_at) >= after_words, 30.0, f"{after_words} words", bots)
        await until(lambda: bool(bot_messages(slack, "CKILL", event["ts"])), 5.0, "a message in Slack", bots)
        victim = bots.owner_of(call)
        assert victim is not None, "no replica holds the model call's connection"
        bots.kill(victim)
        await bots.bots[victim].process.wait()

        def interrupted() -> bool:
            mine = bot_messages(slack, "CKILL", event["ts"])
            return bool(mine) and NOTE_RESTARTED in mine[-1].context

        took = await until(interrupted, RECOVERY_WITHIN + 10.0, "the interrupted note", bots)
        log.info("finished by another replica %.1f s after the kill", took)
        answer = bot_messages(slack, "CKILL", event["ts"])[-1].markdown
        assert len(answer) > 0 and "".join(words).startswith(answer.rstrip()), answer
        rows = await scalar(bots, "SELECT count(*) FROM usage_records WHERE status = 'interrupted'")
        assert rows == 1
        assert took <= RECOVERY_WITHIN, f"recovered after {took:.1f} s (lease 30 s + maintenance 10 s)"


async def test_a_reply_whose_replica_is_killed_mid_stream_is_finished_by_another_within_a_minute(
    slack: BenchSlack, aiml: FakeAimlApi, tmp_path: Path
) -> None:
    # 40 words at 4 a second: past the first checkpoint (5 s), which stores the text and the ts.
    await _kill_mid_stream(slack, aiml, tmp_path, after_words=40, streaming="edits")


async def test_a_reply_killed_in_its_first_seconds_is_finished_by_another_replica_too(
    slack: BenchSlack, aiml: FakeAimlApi, tmp_path: Path
) -> None:
    # 4 words in: about a second of streaming, in the bot's default mode.
    await _kill_mid_stream(slack, aiml, tmp_path, after_words=4, streaming="auto")


async def test_turns_of_one_thread_landing_on_different_replicas_are_answered_strictly_in_order(
    slack: BenchSlack, aiml: FakeAimlApi, tmp_path: Path
) -> None:
    turns = 4
    for n in range(turns):
        # Slow enough that an unordered replica would start the next turn while this one streams.
        aiml.enqueue(Reply(content=[f"Answer {n} ", "takes ", "a ", "while."], ttft=0.3, chunk_interval=0.3))
    root = "1800000300.000001"
    async with replica_set(3, slack, aiml, tmp_path, BASE_ENV) as bots:
        for n in range(turns):
            ts = root if n == 0 else f"1800000300.{n + 1:06d}"
            event = mention(f"[t{n}] question {n}", ts, channel="CORDER", thread_ts=None if n == 0 else root)
            assert await bots.send(event) == 200
            await asyncio.sleep(0.1)
        assert len({s.replica for s in bots.balancer.served}) == 3

        def answered() -> bool:
            mine = bot_messages(slack, "CORDER", root)
            return len(mine) == turns and all(m.context for m in mine)

        await until(answered, 60.0, "every turn answered", bots)
        requests = sorted(aiml.chat_requests, key=lambda r: r.received_at)
        assert len(requests) == turns
        for n, request in enumerate(requests):
            messages = request.json["messages"]
            assert f"[t{n}]" in str(messages[-1]["content"]), n  # admitted order
            history = " ".join(str(m.get("content")) for m in messages if m["role"] == "assistant")
            for earlier in range(n):
                assert f"Answer {earlier} takes a while." in history, (n, earlier)
            if n:  # one at a time: this turn's call began after the previous answer's last word
                assert request.received_at >= requests[n - 1].content_sent_at[-1]
        texts = [m.markdown for m in bot_messages(slack, "CORDER", root)]
        assert texts == [f"Answer {n} takes a while." for n in range(turns)]


async def test_a_turn_waiting_on_a_replica_killed_before_it_started_is_answered_by_another_in_order(
    slack: BenchSlack, aiml: FakeAimlApi, tmp_path: Path
) -> None:
    first = [f"w{i} " for i in range(40)]  # 10 s of answer: the follow-up waits behind it
    aiml.enqueue(Reply(content=first, chunk_interval=0.25), Reply(content="The follow-up's answer."))
    root = "1800000500.000001"
    async with replica_set(3, slack, aiml, tmp_path, BASE_ENV) as bots:
        assert await bots.send(mention("[t0] a long answer", root, channel="CHAND")) == 200
        await until(lambda: len(aiml.chat_requests) == 1, 10.0, "the first model call", bots)
        followup = mention("[t1] and then?", "1800000500.000002", channel="CHAND", thread_ts=root)
        assert await bots.send(followup) == 200
        holder = bots.balancer.served[-1].replica  # round robin: not the replica streaming
        assert holder != bots.owner_of(aiml.chat_requests[0])
        waiting = lambda: asyncio.ensure_future(scalar(bots, "SELECT count(*) FROM turn_places"))  # noqa: E731
        deadline = time.monotonic() + 10
        while await waiting() != 2:
            assert time.monotonic() < deadline, "the follow-up never took its place"
            await asyncio.sleep(0.05)
        bots.kill(holder)
        await bots.bots[holder].process.wait()

        def answered() -> bool:
            mine = bot_messages(slack, "CHAND", root)
            return len(mine) == 2 and all(m.context for m in mine)  # final: footers posted

        took = await until(answered, RECOVERY_WITHIN, "the follow-up answered by another replica", bots)
        log.info("the killed replica's waiting turn was answered %.1f s after the kill", took)
        await asyncio.sleep(1.0)
        assert len(aiml.chat_requests) == 2  # once
        second = aiml.chat_requests[1]
        assert "[t1]" in str(second.json["messages"][-1]["content"])
        assert "".join(first).strip() in " ".join(str(m.get("content")) for m in second.json["messages"])
        assert second.received_at >= aiml.chat_requests[0].content_sent_at[-1]  # in order
        texts = [m.markdown.strip() for m in bot_messages(slack, "CHAND", root)]
        assert texts == ["".join(first).strip(), "The follow-up's answer."], texts


async def warm_up(bots: ReplicaSet, slack: BenchSlack) -> None:
    """One reply per replica (round robin), as a bot in service has had: a cold replica's first
    burst of events each asks auth.test (Bolt's authorization), which a load test should not count."""
    events = [mention("warm up", f"1799999999.{i + 1:06d}", channel="CWARM") for i in range(len(bots.bots))]
    for event in events:
        assert await bots.send(event) == 200
    done = lambda: all(thread_done(slack, "CWARM", e["ts"]) for e in events)  # noqa: E731
    await until(done, 30.0, "the warm-up replies", bots)


async def _slack_429s(replicas: int, slack: BenchSlack, aiml: FakeAimlApi, workdir: Path) -> Counter[str]:
    """429s Slack answered, by method, while 24 replies stream at once in one workspace."""
    async with replica_set(replicas, slack, aiml, workdir, BASE_ENV) as bots:
        await warm_up(bots, slack)
        calls_from = len(slack.calls)
        events = [mention(f"load {i}", f"1800000400.{i + 1:06d}", channel=f"CLOAD{i}") for i in range(24)]
        await asyncio.gather(*(bots.send(e) for e in events))

        def all_done() -> bool:
            return all(thread_done(slack, e["channel"], e["ts"]) for e in events)

        await until(all_done, 90.0, f"24 replies on {replicas} replicas", bots)
        return Counter(c.method for c in slack.calls[calls_from:] if c.status == 429)


async def test_three_replicas_draw_no_more_slack_429s_than_one_on_the_same_load(
    aiml: FakeAimlApi, tmp_path: Path
) -> None:
    aiml.default = Reply(content=[f"w{i} " for i in range(60)], ttft=0.2, chunk_interval=0.05)
    # A Slack each: the same fresh buckets for both runs.
    one_slack, three_slack = BenchSlack(FAST_SLACK), BenchSlack(FAST_SLACK)
    async with one_slack:
        one = await _slack_429s(1, one_slack, aiml, tmp_path / "one")
    async with three_slack:
        three = await _slack_429s(3, three_slack, aiml, tmp_path / "three")
    log.info("Slack 429s: %s with 1 replica, %s with 3", dict(one), dict(three))
    assert three.total() <= one.total(), f"429s by method: {dict(one)} with 1 replica, {dict(three)} with 3"
