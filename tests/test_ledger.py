"""Every billed completion reaches the ledger: written when the upstream call ends, whatever Slack does,
exactly once; and every reply ends with one INFO line saying how it went and what it cost."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.lease import ReplyLease
from bot.conversation.ledger import Ledger
from bot.settings import SettingsError, load_settings
from bot.storage.db import create_engine, session_factory
from bot.storage.models import (
    Conversation,
    ConversationKind,
    Message,
    MessageStatus,
    Role,
    UsageRecord,
    utcnow,
)
from bot.storage.spool import Spool
from bot.storage.usage import UsageEntry
from tests.fakes.aimlapi import Reply
from tests.harness import eventually, make_settings, mention, running_bot


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def usage_rows(sessions: async_sessionmaker[AsyncSession]) -> list[UsageRecord]:
    async with sessions() as session:
        return list((await session.execute(select(UsageRecord).order_by(UsageRecord.id))).scalars())


async def assistant_row(sessions: async_sessionmaker[AsyncSession]) -> Message:
    async with sessions() as session:
        return (await session.execute(select(Message).where(Message.role == Role.ASSISTANT))).scalar_one()


async def test_the_ledger_row_is_written_while_slack_still_rate_limits_the_final_edit(
    db_url, sessions, fakes
):
    slack, aiml = fakes
    slack.fail_next("chat.update", status=429, retry_after=1, times=8)
    aiml.enqueue(Reply(content="An answer Slack is slow to show.", credits_used=4321))
    async with running_bot(make_settings(db_url, slack, aiml), slack) as bot:
        await bot.send(mention("hello", "100.000001"))

        async def recorded() -> bool:
            return bool(await usage_rows(sessions))

        await until(recorded)
        assert bot.runtime.turns is not None and bot.runtime.turns.active  # Slack has not shown it yet
        assert bot.answer("C1", "100.000001") != "An answer Slack is slow to show."
        await bot.idle(timeout=60)
        assert bot.answer("C1", "100.000001") == "An answer Slack is slow to show."

    [row] = await usage_rows(sessions)
    assert (row.status, row.credits_used) == ("complete", 4321)
    stored = await assistant_row(sessions)
    assert (stored.status, stored.content) == (MessageStatus.COMPLETE, "An answer Slack is slow to show.")
    assert stored.request_id == row.client_request_id and stored.lease_expires_at is None


async def test_the_answer_and_its_cost_are_stored_when_slack_refuses_the_final_edit(db_url, sessions, fakes):
    slack, aiml = fakes
    slack.fail_next("chat.update", error="invalid_blocks", times=1000)
    aiml.enqueue(Reply(content="Never shown.", credits_used=99))
    async with running_bot(make_settings(db_url, slack, aiml), slack) as bot:
        await bot.send(mention("hello", "100.000001"))
        await bot.idle(timeout=30)

    [row] = await usage_rows(sessions)
    assert (row.status, row.credits_used) == ("complete", 99)
    stored = await assistant_row(sessions)
    assert (stored.status, stored.content) == (MessageStatus.ERROR, "Never shown.")


async def test_a_reply_recovered_elsewhere_is_not_overwritten_when_its_stream_ends(db_url, sessions, fakes):
    slack, aiml = fakes
    aiml.enqueue(Reply(content="word " * 30, chunk_size=5, chunk_interval=0.05))
    async with running_bot(make_settings(db_url, slack, aiml), slack) as bot:
        await bot.send(mention("stream please", "100.000001"))
        await eventually(lambda: "word" in bot.answer("C1", "100.000001"), 10)
        async with sessions.begin() as session:  # what another replica's recovery stores
            await session.execute(
                update(Message)
                .where(Message.role == Role.ASSISTANT)
                .values(status=MessageStatus.INTERRUPTED, content="recovered")
            )
        await bot.idle(timeout=30)

    stored = await assistant_row(sessions)
    assert (stored.status, stored.content) == (MessageStatus.INTERRUPTED, "recovered")
    [row] = await usage_rows(sessions)
    assert row.status == "complete"


async def test_every_reply_ends_with_one_info_line_with_its_cost_and_no_text(db_url, fakes, caplog):
    slack, aiml = fakes
    aiml.enqueue(Reply(content="A secret answer.", credits_used=555, prompt_tokens=42))
    caplog.set_level(logging.INFO, logger="bot.conversation.service")
    async with running_bot(make_settings(db_url, slack, aiml), slack) as bot:
        await bot.send(mention("a secret question", "100.000001"))
        await bot.idle()

    [line] = [r for r in caplog.records if r.getMessage() == "reply ended"]
    assert line.levelno == logging.INFO
    fields = line.__dict__
    assert fields["outcome"] == "complete"
    assert fields["credits_used"] == 555
    assert fields["prompt_tokens"] == 42 and fields["completion_tokens"]
    assert fields["inference_id"] == aiml.requests[0].inference_id
    assert isinstance(fields["ttft_ms"], int) and fields["duration_ms"] >= fields["ttft_ms"]
    assert not any("secret" in str(value) for value in fields.values())


def _entry(request_id: str, credits: int | None = 10) -> UsageEntry:
    return UsageEntry(
        team_id="T1",
        channel_id="C1",
        user_id="U1",
        conversation_id=None,
        model_requested="zhipu/glm-5",
        model_returned="glm-5",
        prompt_tokens=5,
        completion_tokens=7,
        cached_tokens=0,
        reasoning_tokens=None,
        credits_used=credits,
        usd_spent=None,
        finish_reason="stop",
        status="complete",
        ttft_ms=10,
        duration_ms=20,
        client_request_id=request_id,
        inference_id="inf-1",
    )


async def test_a_spooled_ledger_row_replayed_twice_is_stored_once(sessions, tmp_path):
    spool = Spool(tmp_path, max_rows=10)
    spool.append(
        {"kind": "usage", "entry": _entry("req-1").__dict__, "created_at": "2026-12-01T00:00:00+00:00"}
    )
    spool.append(
        {"kind": "usage", "entry": _entry("req-1").__dict__, "created_at": "2026-12-01T00:00:00+00:00"}
    )
    spool.append(
        {"kind": "usage", "entry": _entry("req-2").__dict__, "created_at": "2026-12-01T00:00:00+00:00"}
    )
    ledger = Ledger(sessions, spool)

    assert await ledger.replay() == 0

    rows = await usage_rows(sessions)
    assert sorted(r.client_request_id or "" for r in rows) == ["req-1", "req-2"]
    assert not spool.path.exists()


class Counted:
    def __init__(self) -> None:
        self.spooled = self.dropped = 0

    def usage_row_spooled(self) -> None:
        self.spooled += 1

    def usage_row_dropped(self) -> None:
        self.dropped += 1


async def test_a_full_spool_drops_the_row_with_an_error_line_and_a_count(tmp_path, caplog):
    engine = create_engine("postgresql+asyncpg://u@127.0.0.1:1/none")  # nothing listens on port 1
    unreachable = session_factory(engine)
    spool = Spool(tmp_path / "spool", max_rows=1)
    counted = Counted()
    ledger = Ledger(unreachable, spool, events=counted, replay_every=3600)
    caplog.set_level(logging.ERROR)

    for number in (1, 2):
        await ledger.completion_ended(
            _entry(f"req-{number}"), number, "text", refs=(), parts=(), lease_until=utcnow()
        )
    await ledger.aclose()
    await engine.dispose()

    assert (counted.spooled, counted.dropped) == (1, 1)
    assert len(spool) == 1 and "req-1" in spool.lines()[0]
    assert any(
        r.levelno == logging.ERROR and "dropped a ledger row" in r.getMessage() for r in caplog.records
    )


async def streaming_replies(sessions: async_sessionmaker[AsyncSession], count: int) -> list[int]:
    """The ids of `count` assistant replies left `streaming`, in one new conversation."""
    async with sessions.begin() as session:
        conversation = Conversation(
            team_id="T1", channel_id="C1", thread_ts="1.0", kind=ConversationKind.CHANNEL
        )
        session.add(conversation)
        await session.flush()
        messages = [
            Message(conversation_id=conversation.id, role=Role.ASSISTANT, status=MessageStatus.STREAMING)
            for _ in range(count)
        ]
        session.add_all(messages)
        await session.flush()
        return [m.id for m in messages]


async def test_a_reply_that_only_thinks_keeps_its_lease_renewed(sessions):
    (message_id,) = await streaming_replies(sessions, 1)
    lease = ReplyLease(sessions, lease=45, renew_every=0.05)
    ended = asyncio.Event()
    keeper = asyncio.create_task(lease.keep(message_id, ended))

    async def renewed() -> bool:
        async with sessions() as session:
            row = await session.get(Message, message_id)
            return row is not None and row.lease_expires_at is not None

    try:
        await until(renewed)
    finally:
        ended.set()
        await keeper


async def test_leases_falling_due_together_are_renewed_in_one_statement(sessions):
    ids = await streaming_replies(sessions, 5)
    renewals: list[str] = []

    def seen(conn, cursor, statement, *_args):  # noqa: ARG001
        if statement.lstrip().upper().startswith("UPDATE MESSAGES SET LEASE_EXPIRES_AT"):
            renewals.append(statement)

    engine = sessions.kw["bind"].sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    lease = ReplyLease(sessions, lease=45, renew_every=0.4)  # renewals gather for 0.1 s
    ended = asyncio.Event()
    keepers = [asyncio.create_task(lease.keep(message_id, ended)) for message_id in ids]

    async def all_renewed() -> bool:
        async with sessions() as session:
            rows = (await session.scalars(select(Message).where(Message.id.in_(ids)))).all()
            return all(row.lease_expires_at is not None for row in rows)

    try:
        await until(all_renewed)
    finally:
        ended.set()
        await asyncio.gather(*keepers)
        event.remove(engine, "before_cursor_execute", seen)
    assert len(renewals) == 1  # five replies due together: one UPDATE


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_spooled_rows_left_by_a_stopped_bot_are_stored_at_the_next_start(
    db_url, sessions, fakes, tmp_path
):
    slack, aiml = fakes
    spool = Spool(tmp_path / "kept", max_rows=10)
    spool.append(
        {"kind": "usage", "entry": _entry("req-9", 777).__dict__, "created_at": "2026-12-01T00:00:00+00:00"}
    )
    async with running_bot(make_settings(db_url, slack, aiml, usage_spool_dir=tmp_path / "kept"), slack):

        async def stored() -> bool:
            return bool(await usage_rows(sessions))

        await until(stored)
    [row] = await usage_rows(sessions)
    assert (row.client_request_id, row.credits_used) == ("req-9", 777)


async def test_a_long_reply_stores_where_each_of_its_slack_messages_begins(db_url, sessions, fakes):
    slack, aiml = fakes
    answer = "".join(f"Sentence {n} of a long answer. " for n in range(400))  # about 12,000 characters
    aiml.enqueue(Reply(content=answer, chunk_size=400))
    async with running_bot(make_settings(db_url, slack, aiml), slack) as bot:
        await bot.send(mention("long please", "100.000001"))
        await bot.idle(timeout=60)
        shown = [m.markdown for m in bot.replies("C1", "100.000001")]

    stored = await assistant_row(sessions)
    parts = stored.slack_parts or []
    assert len(shown) >= 3 and [p["ts"] for p in parts] == stored.slack_ts_all
    starts = [int(str(p["start"])) for p in parts] + [len(answer)]
    assert [answer[a:b] for a, b in itertools.pairwise(starts)] == shown


def test_a_spool_folder_that_is_a_file_is_refused_naming_the_variable(tmp_path, monkeypatch):
    (tmp_path / "spool").write_text("not a folder")
    monkeypatch.setenv("USAGE_SPOOL_DIR", str(tmp_path / "spool"))
    with pytest.raises(SettingsError, match=r"^USAGE_SPOOL_DIR: .*not a directory"):
        load_settings(env_file=None)


async def test_a_replayed_row_replaces_the_one_recovery_wrote_for_the_same_call(sessions, tmp_path):
    async with sessions.begin() as session:
        session.add(
            UsageRecord(model_requested="zhipu/glm-5", status="interrupted", client_request_id="req-5")
        )
    spool = Spool(tmp_path, max_rows=10)
    spool.append(
        {"kind": "usage", "entry": _entry("req-5", 321).__dict__, "created_at": utcnow().isoformat()}
    )

    await Ledger(sessions, spool).replay()

    [row] = await usage_rows(sessions)
    assert (row.status, row.credits_used, row.client_request_id) == ("complete", 321, "req-5")


async def streaming_reply(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions.begin() as session:
        conversation = Conversation(
            team_id="T1", channel_id="C1", thread_ts="1.0", kind=ConversationKind.CHANNEL
        )
        session.add(conversation)
        await session.flush()
        message = Message(
            conversation_id=conversation.id, role=Role.ASSISTANT, status=MessageStatus.STREAMING
        )
        session.add(message)
        await session.flush()
        return message.id


async def test_an_answer_with_a_nul_character_is_stored_without_it_and_its_usage_row_lands(
    sessions, tmp_path
):
    message_id = await streaming_reply(sessions)
    spool = Spool(tmp_path, max_rows=10)
    ledger = Ledger(sessions, spool, replay_every=3600)
    answer = "before\x00after"

    await ledger.completion_ended(
        _entry("req-nul"), message_id, answer, refs=(), parts=(), lease_until=utcnow()
    )
    await ledger.reply_ended(message_id, answer, MessageStatus.COMPLETE, refs=(), parts=())
    await ledger.aclose()

    assert [r.client_request_id for r in await usage_rows(sessions)] == ["req-nul"]
    stored = await assistant_row(sessions)
    assert (stored.status, stored.content) == (MessageStatus.COMPLETE, "beforeafter")
    assert len(spool) == 0 and not spool.path.exists()


async def test_a_spooled_row_the_database_refuses_for_good_is_moved_aside_and_later_rows_replay(
    sessions, tmp_path, caplog
):
    spool = Spool(tmp_path, max_rows=10)
    refused = {**_entry("req-bad").__dict__, "status": None}  # NOT NULL: refused however often tried
    for entry in (_entry("req-1").__dict__, refused, _entry("req-2").__dict__):
        spool.append({"kind": "usage", "entry": entry, "created_at": "2026-12-01T00:00:00+00:00"})
    counted = Counted()
    caplog.set_level(logging.ERROR)

    assert await Ledger(sessions, spool, events=counted).replay() == 0

    assert sorted(r.client_request_id or "" for r in await usage_rows(sessions)) == ["req-1", "req-2"]
    assert not spool.path.exists()
    [kept] = spool.rejected_path.read_text().splitlines()
    assert "req-bad" in kept
    assert counted.dropped == 1
    assert any(
        r.levelno == logging.ERROR and "refused a ledger row" in r.getMessage() for r in caplog.records
    )


async def test_a_replay_while_the_database_is_away_leaves_the_spool_file_untouched(tmp_path):
    engine = create_engine("postgresql+asyncpg://u@127.0.0.1:1/none")  # nothing listens on port 1
    spool = Spool(tmp_path, max_rows=10)
    spool.append(
        {"kind": "usage", "entry": _entry("req-1").__dict__, "created_at": "2026-12-01T00:00:00+00:00"}
    )
    before = spool.path.stat()

    assert await Ledger(session_factory(engine), spool).replay() == 1
    await engine.dispose()

    after = spool.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


async def test_only_ledger_rows_count_as_spooled_not_the_final_texts_that_wait_with_them(tmp_path):
    engine = create_engine("postgresql+asyncpg://u@127.0.0.1:1/none")  # nothing listens on port 1
    spool = Spool(tmp_path, max_rows=10)
    counted = Counted()
    ledger = Ledger(session_factory(engine), spool, events=counted, replay_every=3600)

    await ledger.completion_ended(_entry("req-1"), 1, "text", refs=(), parts=(), lease_until=utcnow())
    await ledger.reply_ended(1, "text", MessageStatus.COMPLETE, refs=(), parts=())
    await ledger.aclose(last_try=0.1)
    await engine.dispose()

    assert len(spool) == 2
    assert (counted.spooled, counted.dropped) == (1, 0)


async def test_the_spool_depth_is_exported_as_a_gauge_read_at_scrape(db_url, fakes):
    from tests.test_metrics import scrape

    slack, aiml = fakes
    async with running_bot(make_settings(db_url, slack, aiml), slack) as bot:
        assert bot.runtime.core is not None
        samples = await scrape(bot.http)
        assert samples[("slackbot_usage_spool_rows", ())] == bot.runtime.core.ledger.pending == 0


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_failed_lease_renewal_is_retried_within_seconds_not_a_whole_period_later(
    db_url, proxy, sessions
):
    message_id = await streaming_reply(sessions)
    engine = create_engine(proxy.url_for(db_url))
    period = 10.0
    lease = ReplyLease(session_factory(engine), lease=45, renew_every=period)
    proxy.cut()
    ended = asyncio.Event()
    failed = asyncio.Event()

    class FirstFailure(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "could not renew" in record.getMessage():
                failed.set()

    watcher = FirstFailure()
    logging.getLogger("bot.conversation.lease").addHandler(watcher)
    keeper = asyncio.create_task(lease.keep(message_id, ended))

    async def renewed() -> bool:
        async with sessions() as session:
            row = await session.get(Message, message_id)
            return row is not None and row.lease_expires_at is not None

    try:
        await asyncio.wait_for(failed.wait(), 60)
        proxy.restore()
        failed_at = time.monotonic()
        await until(renewed, timeout=60)
        # The next regular renewal would come a whole period after the failure.
        assert time.monotonic() - failed_at < period / 2
    finally:
        logging.getLogger("bot.conversation.lease").removeHandler(watcher)
        ended.set()
        await keeper
        await engine.dispose()


async def test_the_turns_last_ledger_row_drops_its_credit_hold_in_the_same_transaction(
    engine, sessions, tmp_path
):
    from bot.conversation.quota import Quotas, Reservation
    from bot.conversation.quota_gate import HeldCredits
    from bot.storage.models import QuotaReservation
    from bot.usage.limits import DefaultLimits, Subject

    async def holds() -> int:
        async with sessions() as session:
            return len((await session.execute(select(QuotaReservation.id))).all())

    quotas = Quotas(sessions, DefaultLimits(user_day=10**9), __import__("zoneinfo").ZoneInfo("UTC"))
    held = await quotas.reserve(Subject("T1", "C1", "U1"), prompt_tokens=5, max_output_tokens=5)
    credits = HeldCredits(quotas, held)  # type: ignore[arg-type]
    message_id = await streaming_reply(sessions)
    ledger = Ledger(sessions, Spool(tmp_path, max_rows=10), replay_every=3600)
    written: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: written.append(a[2].split()[0]))
    event.listen(engine.sync_engine, "commit", lambda *_: written.append("COMMIT"))

    hold = credits.hand_over()
    await ledger.completion_ended(
        _entry("req-held"), message_id, "text", refs=(), parts=(), lease_until=utcnow(), hold=hold
    )
    assert hold is not None and await holds() == 0
    # The row and the hold's end commit together: never both counted, never neither.
    assert written[: written.index("COMMIT") + 1] == ["INSERT", "DELETE", "COMMIT"]
    written.clear()
    await credits.release()  # the turn's end: the hold is gone already, so nothing is written
    assert "DELETE" not in written

    # Spooled (the database was away), the row goes without the hold, which counts for it until it
    # expires: by the replay, its id may be another hold's.
    again = await quotas.reserve(Subject("T1", "C1", "U1"), prompt_tokens=5, max_output_tokens=5)
    assert isinstance(again, Reservation) and again.id is not None and await holds() == 1
    spool = Spool(tmp_path / "away", max_rows=10)
    away = create_engine("postgresql+asyncpg://u@127.0.0.1:1/none")  # nothing listens on port 1
    offline = Ledger(session_factory(away), spool, replay_every=3600)
    await offline.completion_ended(
        _entry("req-away"), message_id, "text", refs=(), parts=(), lease_until=utcnow(), hold=again.id
    )
    await offline.aclose(last_try=0.1)
    await away.dispose()
    assert '"hold"' not in spool.path.read_text()
    assert await Ledger(sessions, spool).replay() == 0
    assert await holds() == 1
    assert "req-away" in [r.client_request_id for r in await usage_rows(sessions)]
