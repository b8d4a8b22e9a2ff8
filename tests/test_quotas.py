"""Quotas through the running bot and the quota stage: refusals, races, settling, expiry."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import event, func, select

from bot.conversation.quota import QuotaRefused, Quotas, Reservation
from bot.storage.db import create_engine, session_factory
from bot.storage.models import QuotaReservation, UsageRecord
from bot.usage.limits import DefaultLimits, Subject
from tests.fakes.aimlapi import Reply
from tests.harness import make_settings, mention, message, running_bot

ZONE = "Europe/Berlin"


def ledger_row(
    credits: int, *, user: str = "U1", channel: str = "C1", when: datetime | None = None
) -> UsageRecord:
    return UsageRecord(
        team_id="T1",
        channel_id=channel,
        user_id=user,
        model_requested="zhipu/glm-5",
        model_returned="glm-5",
        prompt_tokens=100,
        completion_tokens=900,
        credits_used=credits,
        usd_spent=credits / 2_000_000,
        status="complete",
        created_at=when or datetime.now(UTC),
    )


async def test_a_person_over_their_daily_quota_is_refused_in_one_line_without_a_model_call(db_url, fakes):
    slack, aiml = fakes
    settings = make_settings(db_url, slack, aiml, quota_user_daily_credits=5_000, usage_digest_tz=ZONE)
    async with running_bot(settings, slack, aiml) as bot:
        aiml.enqueue(Reply(content="A long answer.", credits_used=6_000))
        await bot.send(mention("first question", "100.000001"))
        await bot.idle()
        assert len(aiml.chat_requests) == 1

        await bot.send(message("and another", "100.000002", thread_ts="100.000001"))
        await bot.idle()

    assert len(aiml.chat_requests) == 1  # the second turn never reached the model
    last = bot.replies("C1", "100.000001")[-1]
    shown = last.text + last.context
    assert "daily AI limit" in shown and "5,000 credits" in shown
    assert "00:00" in shown and ZONE in shown and "/glm quota" in shown
    assert last.text == shown.strip() or last.context  # the note, as one line
    assert len(shown.strip().splitlines()) == 1


async def test_a_person_under_their_quota_is_answered_and_the_reservation_is_settled(db_url, fakes, sessions):
    slack, aiml = fakes
    settings = make_settings(db_url, slack, aiml, quota_user_daily_credits=1_000_000)
    async with running_bot(settings, slack, aiml) as bot:
        aiml.enqueue(Reply(content="Fine.", credits_used=777))
        await bot.send(mention("hello", "100.000001"))
        await bot.idle()
        assert bot.answer("C1", "100.000001") == "Fine."
    async with sessions() as session:
        held = await session.scalar(select(func.count(QuotaReservation.id)))
        spent = await session.scalar(select(func.sum(UsageRecord.credits_used)))
    assert held == 0 and spent == 777


def stage_on(sessions, **limits: int) -> Quotas:
    return Quotas(sessions, DefaultLimits(**limits), __import__("zoneinfo").ZoneInfo("UTC"))


async def test_twenty_concurrent_requests_from_two_processes_overshoot_by_no_more_than_the_reservations(
    db_url, sessions
):
    async with sessions.begin() as session:
        session.add(ledger_row(9_000))  # 1,000 credits left of 10,000 (9 credits a token)
    # Two engines: two processes' connection pools on one database.
    other = create_engine(db_url)
    stages = [stage_on(sessions, user_day=14_000), stage_on(session_factory(other), user_day=14_000)]
    subject = Subject("T1", "C1", "U1")

    async def one(n: int) -> Reservation | QuotaRefused:
        return await stages[n % 2].reserve(subject, prompt_tokens=50, max_output_tokens=50)

    try:
        outcomes = await asyncio.gather(*(one(n) for n in range(20)))
    finally:
        await other.dispose()
    admitted = [o for o in outcomes if isinstance(o, Reservation)]
    assert admitted and len(admitted) < 20
    # Every admitted call spends its whole estimate; the limit is overshot by at most the holds.
    async with sessions.begin() as session:
        for reservation in admitted:
            session.add(ledger_row(reservation.credits))
    for reservation in admitted:
        await stages[0].settle(reservation)
    async with sessions() as session:
        spent = int(await session.scalar(select(func.sum(UsageRecord.credits_used))) or 0)
    assert spent - 14_000 <= sum(r.credits for r in admitted)
    # Serialised: each call saw the holds before it, so only as many as had room got through
    # (5,000 credits left, 1,080 held each: the fifth still saw room).
    assert len(admitted) == -(-5_000 // admitted[0].credits) == 5


async def test_far_from_every_limit_the_hold_is_written_without_the_workspaces_lock_and_still_counts(
    sessions,
):
    async with sessions.begin() as session:
        session.add(ledger_row(9_000))
    stage = stage_on(sessions, user_day=1_000_000, workspace_month=10_000_000)
    subject = Subject("T1", "C1", "U1")
    statements: list[str] = []
    engine = sessions.kw["bind"].sync_engine

    def seen(conn, cursor, statement, *_args):  # noqa: ARG001
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        held = await asyncio.gather(
            *(stage.reserve(subject, prompt_tokens=50, max_output_tokens=50) for _ in range(10))
        )
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert all(isinstance(h, Reservation) and h.unlocked for h in held)
    assert not [s for s in statements if "pg_advisory_xact_lock" in s or s.startswith("DELETE")]
    [use, *_] = await stage.uses(subject)
    assert use.reserved == sum(h.credits for h in held if isinstance(h, Reservation))

    # Past half of a limit (with this process's unlocked holds counted once more), the check and
    # hold run under the lock again, one call after another.
    near = stage_on(sessions, user_day=30_000)
    locked = await near.reserve(subject, prompt_tokens=50, max_output_tokens=50)
    assert isinstance(locked, Reservation) and not locked.unlocked
    for reservation in [*held, locked]:
        assert isinstance(reservation, Reservation)
        await stage.settle(reservation)
    assert stage._unlocked == {}  # every unlocked estimate was given back


async def test_an_expired_reservation_no_longer_counts(sessions):
    stage = stage_on(sessions, user_day=10_000)
    subject = Subject("T1", "C1", "U1")
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    held = await stage.reserve(subject, prompt_tokens=10_000, max_output_tokens=0, now=long_ago)
    assert isinstance(held, Reservation) and held.credits >= 10_000  # never settled: a crash

    again = await stage.reserve(subject, prompt_tokens=10, max_output_tokens=10)
    assert isinstance(again, Reservation)


async def test_a_live_reservation_counts_until_it_is_settled(sessions):
    stage = stage_on(sessions, user_day=10_000)
    subject = Subject("T1", "C1", "U1")
    held = await stage.reserve(subject, prompt_tokens=10_000, max_output_tokens=0)
    assert isinstance(held, Reservation)

    refused = await stage.reserve(subject, prompt_tokens=10, max_output_tokens=10)
    assert isinstance(refused, QuotaRefused) and refused.use.reserved == held.credits

    await stage.settle(held)
    assert isinstance(await stage.reserve(subject, prompt_tokens=10, max_output_tokens=10), Reservation)


async def test_the_estimate_is_calibrated_from_the_ledgers_credits_per_token(sessions):
    async with sessions.begin() as session:
        session.add(ledger_row(2_000))  # 2 credits a token (1,000 tokens)
    stage = stage_on(sessions, user_day=10_000_000)
    held = await stage.reserve(Subject("T1", "C1", "U1"), prompt_tokens=500, max_output_tokens=500)
    assert isinstance(held, Reservation) and held.credits == 2_400  # 1,000 tokens x 2 x 1.2 margin


async def test_no_limit_means_no_reservation_and_no_statement_on_the_hot_path(engine, sessions):
    stage = stage_on(sessions)
    subject = Subject("T1", "C1", "U1")
    await stage.reserve(subject, prompt_tokens=500, max_output_tokens=500)  # reads the overrides once
    statements: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    held = await stage.reserve(subject, prompt_tokens=500, max_output_tokens=500)

    assert held == Reservation(None, subject, 0)
    assert statements == []


async def test_a_limited_turn_costs_one_statement_to_check_and_reserve(engine, sessions):
    stage = stage_on(sessions, user_day=10**9, user_month=10**9, channel_day=10**9, workspace_month=10**9)
    subject = Subject("T1", "C1", "U1")
    await stage.reserve(subject, prompt_tokens=5, max_output_tokens=5)  # overrides and calibration, cached
    statements: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    held = await stage.reserve(subject, prompt_tokens=5, max_output_tokens=5)

    assert isinstance(held, Reservation)
    # Far from every limit: one INSERT ... SELECT with every sum in its condition; settling is one
    # DELETE afterwards. (Nearer a limit: the workspace's lock, the sums, the INSERT.)
    assert len(statements) == 1, statements
    async with sessions() as session:
        assert await session.scalar(select(func.count(QuotaReservation.id))) == 2


async def test_twenty_mentions_at_once_through_the_endpoint_call_the_model_only_while_credits_last(
    db_url, fakes, sessions
):
    slack, aiml = fakes
    # Each turn holds about (a few prompt tokens + 100 output) x 10 credits = ~1,100 of 5,000.
    settings = make_settings(db_url, slack, aiml, quota_user_daily_credits=5_000, llm_max_output_tokens=100)
    slack.limits.pop("chat.postMessage")  # twenty threads' notes in one second: not what is tested here
    async with running_bot(settings, slack, aiml) as bot:
        for _ in range(20):
            aiml.enqueue(Reply(content="Yes.", credits_used=1_000))
        await asyncio.gather(*(bot.send(mention(f"question {n}", f"200.{n:06d}")) for n in range(20)))
        await bot.idle()
    async with sessions() as session:
        spent = int(await session.scalar(select(func.sum(UsageRecord.credits_used))) or 0)
        held = await session.scalar(select(func.count(QuotaReservation.id)))
    answered = len(aiml.chat_requests)
    assert 1 <= answered <= 5  # serialised: the sixth saw five holds of ~1,100 and no room
    assert spent == answered * 1_000 and held == 0
    refused = [m for m in slack.messages("C1") if "daily AI limit" in m.text + m.context]
    assert len(refused) == 20 - answered


async def test_a_direct_message_counts_against_the_persons_limits_not_a_channel_limit(db_url, fakes):
    slack, aiml = fakes
    settings = make_settings(
        db_url, slack, aiml, quota_channel_daily_credits=0, quota_user_daily_credits=10**6
    )
    async with running_bot(settings, slack, aiml) as bot:
        aiml.enqueue(Reply(content="In private.", credits_used=10))
        await bot.send(message("hi", "300.000001", channel="D1", channel_type="im"))
        await bot.send(mention("and here?", "300.000002", channel="C1"))
        await bot.idle()
    assert bot.answer("D1", "300.000001") == "In private."
    assert len(aiml.chat_requests) == 1  # the channel's zero limit refused the mention


async def test_the_workspace_budgets_sum_reads_the_ledger_through_its_index(sessions):
    """Every turn sums the workspace's month when a budget is set: it must not scan the ledger."""
    from sqlalchemy import text

    from bot.storage.quotas import Window, spend

    start = datetime(2026, 12, 1, tzinfo=UTC)
    window = Window("team_id", "T1", start, start + timedelta(days=31))
    plans: list[str] = []

    def explain(conn, cursor, statement, parameters, context, executemany):  # noqa: ARG001
        if "usage_records" in statement and not statement.startswith("EXPLAIN"):
            prefix = "EXPLAIN QUERY PLAN " if conn.dialect.name == "sqlite" else "EXPLAIN "
            cursor.execute(prefix + statement, parameters)
            plans.extend(" ".join(str(v) for v in row) for row in cursor.fetchall())

    async with sessions() as session:
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(text("SET enable_seqscan = off"))  # a tiny table: ask for the index
        engine = session.get_bind()
        event.listen(engine, "before_cursor_execute", explain)
        try:
            assert await spend(session, [window], [], start) == ([0], [])
        finally:
            event.remove(engine, "before_cursor_execute", explain)
    assert any("ix_usage_records_team_created" in plan for plan in plans), plans


async def test_a_turn_held_far_from_every_limit_that_cost_no_more_than_its_hold_is_not_checked_for_alerts(
    sessions,
):
    from bot.conversation.quota import UNLOCKED_BELOW
    from bot.usage.alerts import THRESHOLDS

    # Why the check may be skipped: far means at most this full, below the first alert threshold.
    assert min(THRESHOLDS) > UNLOCKED_BELOW * 100
    stage = stage_on(sessions, user_day=1_000_000)
    checked: list[Subject] = []
    stage.on_settled = checked.append
    subject = Subject("T1", "C1", "U1")

    far = await stage.reserve(subject, prompt_tokens=50, max_output_tokens=50)
    assert isinstance(far, Reservation) and far.unlocked
    await stage.settle(far, spent=far.credits)  # cost what it held: no threshold can have been crossed
    assert checked == []

    over = await stage.reserve(subject, prompt_tokens=50, max_output_tokens=50)
    assert isinstance(over, Reservation) and over.unlocked
    await stage.settle(over, spent=over.credits + 1)  # cost more than it held: checked
    unknown = await stage.reserve(subject, prompt_tokens=50, max_output_tokens=50)
    assert isinstance(unknown, Reservation)
    await stage.settle(unknown)  # the cost is unknown (released, or no usage reported): checked
    assert checked == [subject, subject]

    async with sessions.begin() as session:
        session.add(ledger_row(600_000))  # 60 % used: the next hold is taken under the lock
    near = await stage.reserve(subject, prompt_tokens=50, max_output_tokens=50)
    assert isinstance(near, Reservation) and not near.unlocked
    await stage.settle(near, spent=near.credits)
    assert checked == [subject, subject, subject]


async def test_far_from_every_limit_a_mention_is_claimed_and_its_credits_held_in_one_transaction(
    engine, sessions
):
    from bot.conversation.admission import Admission, Admitted, Arrival
    from bot.conversation.keys import ConversationKey, ConversationKind
    from bot.conversation.ordering import TurnOrder
    from bot.conversation.quota_gate import QuotaGate

    quotas = stage_on(sessions, user_day=10**9, channel_day=10**9, workspace_month=10**9)
    admission = Admission(
        sessions, TurnOrder(), thread_followups=True, quota=QuotaGate(quotas, max_output_tokens=1000)
    )

    def asked(ts: str) -> Arrival:
        key = ConversationKey("T1", "C1", ts)
        return Arrival(f"Ev{ts}", key, ConversationKind.CHANNEL, "U1", ts, "hello", True)

    warm = await admission.admit(asked("1.0"), None)  # type: ignore[arg-type]  # reads overrides, rates
    assert isinstance(warm, Admitted)
    commits: list[str] = []
    event.listen(engine.sync_engine, "commit", lambda *_: commits.append("COMMIT"))

    admitted = await admission.admit(asked("2.0"), None)  # type: ignore[arg-type]  # no policy: no look-up

    assert isinstance(admitted, Admitted) and admitted.reservation is not None
    assert commits == ["COMMIT"]  # the claim, the thread, its place and the hold: one write
    async with sessions() as session:
        assert await session.scalar(select(func.count(QuotaReservation.id))) == 2
    assert quotas._uncommitted == {}  # every hold is committed and seen by the checks
    for turn in (warm, admitted):
        turn.ticket.leave()
        await turn.reservation.release()  # type: ignore[union-attr]
    async with sessions() as session:
        assert await session.scalar(select(func.count(QuotaReservation.id))) == 0
    assert quotas._unlocked == {}


async def test_a_turns_hold_ended_twice_leaves_the_processs_sums_as_one_end_does(sessions):
    from bot.conversation.quota_gate import HeldCredits

    quotas = stage_on(sessions, user_day=10**9)
    subject = Subject("T1", "C1", "U1")
    first = await quotas.reserve(subject, prompt_tokens=5, max_output_tokens=5)
    second = await quotas.reserve(subject, prompt_tokens=5, max_output_tokens=5)
    assert isinstance(first, Reservation) and isinstance(second, Reservation) and first.unlocked
    credits = HeldCredits(quotas, first)
    await credits.release()
    await credits.release()  # a refusal path and a cancellation both ending it: the second is nothing
    assert quotas._unlocked == {"T1": second.credits}


async def test_a_hold_refused_with_the_claim_is_checked_under_the_lock_at_once(sessions):
    quotas = stage_on(sessions, user_day=10**9)
    subject = Subject("T1", "C1", "U1")

    held = await quotas.reserve(subject, prompt_tokens=5, max_output_tokens=5, near=True)

    # Far from the limit, the check without the lock would have held it (`unlocked`): it was skipped.
    assert isinstance(held, Reservation) and held.id is not None and not held.unlocked
