"""Start-up recovery: replies a crashed process left `streaming` end with an interrupted note."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp
import pytest
from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select, update

from bot.conversation.lease import PLACE_LEASE_SECONDS, ReplyLease, kept_here
from bot.jobs.maintenance import Maintenance
from bot.slack.edit_budget import DEFAULT_RATE_PER_MINUTE, EditBudgets
from bot.slack.recovery import NOTE_RESTARTED, last_part
from bot.slack.text import find_split
from bot.storage.db import create_engine, session_factory
from bot.storage.models import (
    Conversation,
    ConversationKind,
    Message,
    MessageStatus,
    Role,
    TurnPlace,
    UsageRecord,
    utcnow,
)
from tests.fakes.slack_api import FakeSlackApi
from tests.harness import make_settings, running_bot


async def seed_stale_reply(
    sessions,
    slack: FakeSlackApi,
    content: str,
    age: timedelta,
    *,
    lease: timedelta | None = None,
    request_id: str | None = None,
    thread_ts: str = "100.000001",
    shown: bool = True,
) -> tuple[int, str]:
    """A reply left `streaming`, begun `age` ago; `lease`: how long its lease still runs (negative:
    expired that long ago; None: written before leases existed); `shown`: its Slack message exists
    (else its process died before posting one: its ts is "")."""
    shown_ts = (
        slack.add_message(
            "C1", content + " ▍", user=slack.bot_user_id, thread_ts=thread_ts, bot_id=slack.bot_id
        )
        if shown
        else None
    )
    async with sessions.begin() as session:
        conversation = Conversation(
            team_id="T1", channel_id="C1", thread_ts=thread_ts, kind=ConversationKind.CHANNEL
        )
        session.add(conversation)
        await session.flush()
        session.add(
            Message(
                conversation_id=conversation.id,
                role=Role.USER,
                content="a question",
                user_id="U7",
                status=MessageStatus.COMPLETE,
                created_at=utcnow() - age,
            )
        )
        message = Message(
            conversation_id=conversation.id,
            role=Role.ASSISTANT,
            content=content,
            status=MessageStatus.STREAMING,
            slack_ts=shown_ts,
            slack_ts_all=None if shown_ts is None else [shown_ts],
            created_at=utcnow() - age,
            lease_expires_at=None if lease is None else utcnow() + lease,
            request_id=request_id,
        )
        session.add(message)
        await session.flush()
        return message.id, shown_ts or ""


async def test_a_reply_left_streaming_by_a_crash_is_finished_at_start_up(db_url, sessions, fakes):
    slack, aiml = fakes
    message_id, ts = await seed_stale_reply(sessions, slack, "The first half of", timedelta(minutes=30))

    async with running_bot(make_settings(db_url, slack, aiml), slack):
        pass

    shown = slack.message("C1", ts)
    assert shown.markdown == "The first half of"
    assert NOTE_RESTARTED in shown.context
    async with sessions() as session:
        stored = await session.get(Message, message_id)
    assert stored is not None and stored.status is MessageStatus.INTERRUPTED


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_with_sqlite_even_a_fresh_stale_reply_is_finished_at_start_up(db_url, sessions, fakes):
    slack, aiml = fakes
    message_id, _ = await seed_stale_reply(sessions, slack, "Just begun", timedelta(seconds=1))
    async with running_bot(make_settings(db_url, slack, aiml), slack):
        pass
    async with sessions() as session:
        status = (await session.execute(select(Message.status).where(Message.id == message_id))).scalar_one()
    assert status is MessageStatus.INTERRUPTED


def test_the_last_part_matches_what_the_renderer_put_in_the_last_message():
    content = "\n\n".join(f"Paragraph {i}. " + "words " * 60 for i in range(40))
    first = find_split(content, 3900)
    second = find_split(first.rest(content), 3900)
    assert last_part(content, 1) == first.head(content)
    assert last_part(content, 3) == find_split(second.rest(first.rest(content)), 3900).head(
        second.rest(first.rest(content))
    )
    assert content.endswith(last_part(content, 4))


@pytest.fixture
def slack_client(fakes) -> AsyncWebClient:
    slack, _ = fakes
    return AsyncWebClient(token="xoxb-test", base_url=slack.api_url)


def maintenance(sessions, client: AsyncWebClient, **kwargs) -> Maintenance:
    return Maintenance(sessions, client, model="zhipu/glm-5", single_process=False, **kwargs)


async def statuses(sessions) -> dict[int, MessageStatus]:
    async with sessions() as session:
        rows = await session.execute(select(Message.id, Message.status).where(Message.role == Role.ASSISTANT))
        return {row[0]: row[1] for row in rows}


async def usage_rows(sessions) -> list[UsageRecord]:
    async with sessions() as session:
        return list((await session.execute(select(UsageRecord))).scalars())


async def test_recovery_leaves_a_reply_with_a_live_lease_alone_however_old(sessions, fakes, slack_client):
    slack, _ = fakes
    live, live_ts = await seed_stale_reply(
        sessions, slack, "Still delivering", timedelta(minutes=30), lease=timedelta(seconds=40)
    )
    dead, _ = await seed_stale_reply(
        sessions,
        slack,
        "Its process died",
        timedelta(seconds=50),
        lease=-timedelta(seconds=1),
        thread_ts="200.1",
    )

    assert await maintenance(sessions, slack_client).run_once()

    assert await statuses(sessions) == {live: MessageStatus.STREAMING, dead: MessageStatus.INTERRUPTED}
    assert NOTE_RESTARTED not in slack.message("C1", live_ts).context
    assert live_ts not in [c.params["ts"] for c in slack.calls_to("chat.update")]


async def test_a_note_slack_rate_limits_is_posted_after_retry_after_within_the_budget(
    sessions, fakes, slack_client
):
    # A dead replica leaves dozens of replies: notes meet Slack's chat.update limit beside live
    # streams, and the row is `interrupted` already, so a note given up would never show.
    slack, _ = fakes
    _, ts = await seed_stale_reply(
        sessions, slack, "Half of it", timedelta(minutes=2), lease=-timedelta(seconds=5)
    )
    slack.fail_next("chat.update", error="ratelimited", status=429, retry_after=1)
    budgets = EditBudgets()

    await maintenance(sessions, slack_client, budgets=budgets).run_once()

    assert NOTE_RESTARTED in slack.message("C1", ts).context
    assert [c.status for c in slack.calls_to("chat.update")][-1] == 200
    assert budgets.for_team("T1").rate_per_minute < DEFAULT_RATE_PER_MINUTE  # the 429 was counted


async def test_a_reply_that_died_before_its_first_message_gets_the_note_in_its_thread(
    sessions, fakes, slack_client
):
    # The status was up (no placeholder: the first text would have been the message), then the
    # process died: without a note the person would see nothing at all.
    slack, _ = fakes
    dead, _ = await seed_stale_reply(
        sessions, slack, "", timedelta(seconds=30), lease=-timedelta(seconds=1), shown=False
    )

    assert await maintenance(sessions, slack_client, budgets=EditBudgets()).run_once()

    assert (await statuses(sessions))[dead] is MessageStatus.INTERRUPTED
    [post] = slack.calls_to("chat.postMessage")
    assert post.params["thread_ts"] == "100.000001" and post.params["text"] == NOTE_RESTARTED
    assert not slack.calls_to("chat.update")


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_note_posted_as_a_message_of_its_own_is_in_the_thread_before_the_claim_commits(
    sessions, fakes, slack_client
):
    # The turns after a dead replica's reply wait until the reply is no longer `streaming` (PostgreSQL,
    # bot.storage.turn_places): by then the note they must follow is in the thread.
    slack, _ = fakes
    dead, _ = await seed_stale_reply(
        sessions, slack, "", timedelta(seconds=30), lease=-timedelta(seconds=1), shown=False
    )
    seen_while_posting = []

    async def posting(params, team_id):
        seen_while_posting.append((await statuses(sessions))[dead])
        return await post(params, team_id)

    post = slack.route("chat.postMessage", posting)
    assert post is not None

    assert await maintenance(sessions, slack_client, budgets=EditBudgets()).run_once()

    assert seen_while_posting == [MessageStatus.STREAMING]
    assert (await statuses(sessions))[dead] is MessageStatus.INTERRUPTED


async def test_a_dead_replicas_notes_are_booked_ahead_of_the_next_edits(sessions, fakes, slack_client):
    slack, _ = fakes
    for n in range(4):
        await seed_stale_reply(
            sessions,
            slack,
            f"Answer {n}",
            timedelta(seconds=40),
            lease=-timedelta(seconds=1),
            thread_ts=f"30{n}.1",
        )
    budgets = EditBudgets(600.0, 1)  # a call every 0.1 s
    budget = budgets.for_team("T1")
    recovering = asyncio.create_task(maintenance(sessions, slack_client, budgets=budgets).run_once())
    while len(slack.calls_to("chat.update")) < 1:
        await asyncio.sleep(0.01)
    await budget.acquire("a live stream", final=True)  # asked once the notes were booked
    notes_before = len(slack.calls_to("chat.update"))
    await recovering

    assert notes_before >= 3, "the live stream's edit came after the booked notes"
    assert all(
        NOTE_RESTARTED in slack.message("C1", c.params["ts"]).context for c in slack.calls_to("chat.update")
    )


async def test_recovery_records_the_interrupted_call_with_unknown_cost(sessions, fakes, slack_client):
    slack, _ = fakes
    await seed_stale_reply(
        sessions, slack, "Half", timedelta(minutes=2), lease=-timedelta(seconds=5), request_id="slackbot-abc"
    )

    await maintenance(sessions, slack_client).run_once()

    [row] = await usage_rows(sessions)
    assert (row.status, row.client_request_id, row.user_id, row.channel_id) == (
        "interrupted",
        "slackbot-abc",
        "U7",
        "C1",
    )
    assert row.credits_used is None and row.prompt_tokens is None and row.usd_spent is None
    assert row.model_requested == "zhipu/glm-5"


async def test_recovery_adds_no_second_row_when_the_call_was_recorded_at_its_end(
    sessions, fakes, slack_client
):
    slack, _ = fakes
    await seed_stale_reply(
        sessions,
        slack,
        "All of it",
        timedelta(minutes=2),
        lease=-timedelta(seconds=5),
        request_id="slackbot-xyz",
    )
    async with sessions.begin() as session:
        session.add(
            UsageRecord(
                model_requested="zhipu/glm-5",
                status="complete",
                credits_used=800,
                client_request_id="slackbot-xyz",
                team_id="T1",
                channel_id="C1",
            )
        )

    await maintenance(sessions, slack_client).run_once()

    [row] = await usage_rows(sessions)
    assert (row.status, row.credits_used) == ("complete", 800)


async def test_two_replicas_recovering_at_once_finish_each_reply_once(db_url, sessions, fakes, slack_client):
    slack, _ = fakes
    ids = [
        (
            await seed_stale_reply(
                sessions,
                slack,
                f"Reply {n}",
                timedelta(minutes=2),
                lease=-timedelta(seconds=5),
                request_id=f"req-{n}",
                thread_ts=f"{n}00.1",
            )
        )[1]
        for n in range(1, 6)
    ]
    other_engine = create_engine(db_url)
    try:
        other = session_factory(other_engine)
        results = await asyncio.gather(
            maintenance(sessions, slack_client).run_once(), maintenance(other, slack_client).run_once()
        )
    finally:
        await other_engine.dispose()

    assert list(results) == [True, True]
    edited = [c.params["ts"] for c in slack.calls_to("chat.update")]
    assert sorted(edited) == sorted(ids)
    assert len(await usage_rows(sessions)) == 5


async def test_recovery_redraws_the_last_message_from_the_split_points_the_renderer_used(
    sessions, fakes, slack_client
):
    slack, _ = fakes
    content = "".join(f"Sentence number {n}. " for n in range(150))  # about 3,000 characters
    message_id, last_ts = await seed_stale_reply(
        sessions, slack, content, timedelta(minutes=2), lease=-timedelta(seconds=5)
    )
    first_ts = slack.add_message(
        "C1", content[:1000], user=slack.bot_user_id, thread_ts="100.000001", bot_id=slack.bot_id
    )
    parts = [
        {"ts": first_ts, "start": 0, "reopen": "", "limit": 1200},
        {"ts": last_ts, "start": 1000, "reopen": "", "limit": 1200},
    ]
    async with sessions.begin() as session:
        await session.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(slack_ts_all=[first_ts, last_ts], slack_parts=parts)
        )

    await maintenance(sessions, slack_client).run_once()

    shown = slack.message("C1", last_ts)
    assert shown.markdown == find_split(content[1000:], 1200).head(content[1000:])
    assert content[1000:].startswith(shown.markdown)
    assert slack.calls_to("chat.update")[0].params["ts"] == last_ts


async def test_a_slack_disconnect_during_recovery_neither_stops_start_up_nor_the_loop(
    db_url, sessions, fakes
):
    slack, aiml = fakes
    message_id, _ = await seed_stale_reply(
        sessions, slack, "Half", timedelta(minutes=2), lease=-timedelta(seconds=5)
    )
    async with DroppingSlack(slack.api_url, drop="chat.update") as dropping:
        settings = make_settings(db_url, slack, aiml, slack_api_url=dropping.url)
        async with running_bot(settings, slack) as bot:
            assert (await bot.http.get("/healthz")).status_code == 200
        assert dropping.dropped >= 1
    assert (await statuses(sessions))[message_id] is MessageStatus.INTERRUPTED


class DroppingSlack:
    """A pass-through to the fake Slack that hangs up, without an answer, on one method's calls."""

    def __init__(self, upstream: str, *, drop: str) -> None:
        self._upstream, self._drop = upstream, drop
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self.dropped = 0
        self.url = ""

    async def __aenter__(self) -> DroppingSlack:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/api/"
        self._client = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._client is not None
        await self._client.close()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        body = await request.read()
        if method == self._drop:
            self.dropped += 1
            assert request.transport is not None
            request.transport.close()  # no answer at all: aiohttp's ServerDisconnectedError
            raise web.HTTPInternalServerError
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with self._client.post(self._upstream + method, data=body, headers=headers) as upstream:
            return web.Response(
                body=await upstream.read(), status=upstream.status, content_type="application/json"
            )


async def test_maintenance_leaves_alone_a_reply_this_process_still_streams_though_its_row_lease_ran_out(
    sessions, fakes, slack_client
):
    slack, _ = fakes
    streaming, shown_ts = await seed_stale_reply(
        sessions, slack, "Still arriving", timedelta(minutes=2), lease=-timedelta(seconds=30)
    )
    ended = asyncio.Event()
    keeper = asyncio.create_task(ReplyLease(sessions, renew_every=3600).keep(streaming, ended))
    try:
        while streaming not in kept_here():
            await asyncio.sleep(0.01)

        assert await maintenance(sessions, slack_client).run_once()

        assert await statuses(sessions) == {streaming: MessageStatus.STREAMING}
        assert shown_ts not in [c.params["ts"] for c in slack.calls_to("chat.update")]
    finally:
        ended.set()
        await keeper
    assert await maintenance(sessions, slack_client).run_once()  # no longer kept: its lease counts
    assert await statuses(sessions) == {streaming: MessageStatus.INTERRUPTED}


async def test_a_reply_without_a_lease_is_recovered_only_once_older_than_the_old_timeout(
    sessions, fakes, slack_client
):
    slack, _ = fakes
    fresh, _ = await seed_stale_reply(sessions, slack, "Written by old code", timedelta(seconds=30))
    old, _ = await seed_stale_reply(
        sessions, slack, "Left by old code", timedelta(minutes=10), thread_ts="200.1"
    )

    assert await maintenance(sessions, slack_client, legacy_after=timedelta(seconds=420)).run_once()

    assert await statuses(sessions) == {fresh: MessageStatus.STREAMING, old: MessageStatus.INTERRUPTED}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_gone_replicas_replies_are_recovered_before_their_leases_run_out(db_url, sessions, fakes):
    """kill -9 ends the replica's listening connection at once: its replies need not wait 18 s."""
    import asyncpg

    from bot.storage.signals import asyncpg_dsn, presence_name

    slack, _ = fakes
    client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url)
    replies = {}
    for holder, renewed_ago in [("gone", 10), ("alive", 10), ("blip", 2), ("gone before", 10)]:
        # Each reply's own lease still runs for a while; its turn's place was renewed `renewed_ago`.
        message_id, _ = await seed_stale_reply(
            sessions,
            slack,
            f"From {holder}",
            timedelta(seconds=30),
            lease=timedelta(seconds=10),
            thread_ts=f"{holder}.1",
        )
        async with sessions.begin() as session:
            found = await session.get(Message, message_id)
            assert found is not None
            conversation_id = found.conversation_id
            session.add(
                TurnPlace(
                    conversation_id=conversation_id,
                    holder=holder,
                    expires_at=utcnow() + timedelta(seconds=PLACE_LEASE_SECONDS - renewed_ago),
                    started_at=utcnow() - timedelta(seconds=20),
                )
            )
        replies[holder] = message_id
    # The next turn of "gone before"'s conversation runs on a live replica now: its reply is that one's.
    async with sessions.begin() as session:
        found = await session.get(Message, replies["gone before"])
        assert found is not None
        session.add(
            TurnPlace(
                conversation_id=found.conversation_id,
                holder="next",
                expires_at=utcnow() + timedelta(seconds=PLACE_LEASE_SECONDS),
                started_at=utcnow(),
            )
        )
    alive = await asyncpg.connect(
        asyncpg_dsn(db_url), server_settings={"application_name": presence_name("alive")}
    )
    try:
        # Just back from an outage, this replica's own listener not steady yet: leases only.
        assert await maintenance(sessions, client, presence=lambda: False).run_once()
        assert set((await statuses(sessions)).values()) == {MessageStatus.STREAMING}
        assert await maintenance(sessions, client, presence=lambda: True).run_once()
    finally:
        await alive.close()

    # Gone and quiet for 10 s: recovered. Its listener alive: not. Gone for a moment (its places
    # renewed 2 s ago, as a replica whose listener reconnects keeps doing): not yet.
    assert await statuses(sessions) == {
        replies["gone"]: MessageStatus.INTERRUPTED,
        replies["alive"]: MessageStatus.STREAMING,
        replies["blip"]: MessageStatus.STREAMING,
        replies["gone before"]: MessageStatus.STREAMING,
    }
