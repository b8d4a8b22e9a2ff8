"""Migration 0003_agent_surface on SQLite and PostgreSQL: up from the revision before keeps the data,
the new tables enforce one vote per person per answer, and down removes only what it added."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.storage import agent_context
from bot.storage.db import create_engine
from bot.storage.feedback import Vote, VoteCast, feedback_counts, find_vote, record_vote
from bot.storage.migrate import current_revision, run_alembic, script_location, upgrade_head
from bot.storage.models import FeedbackVote

NEW_TABLES = {"agent_contexts", "feedback_votes"}
REVISION = "0003_agent_surface"


def revision_before() -> str:
    """The revision this one follows (the chain is redrawn when branches merge)."""
    revision = ScriptDirectory(str(script_location())).get_revision(REVISION)
    assert revision is not None and isinstance(revision.down_revision, str)
    return revision.down_revision


async def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_upgrade_adds_the_tables_and_downgrade_removes_only_them(empty_db_url: str) -> None:
    before = revision_before()
    await run_alembic(empty_db_url, lambda config: command.upgrade(config, before))
    engine = create_engine(empty_db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO conversations (team_id, channel_id, thread_ts, kind, created_at, "
                    "updated_at) VALUES ('T1', 'D1', '1.000001', 'dm', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
        await run_alembic(empty_db_url, lambda config: command.upgrade(config, REVISION))
        assert await current_revision(empty_db_url) == REVISION
        assert await tables(empty_db_url) >= NEW_TABLES

        await run_alembic(empty_db_url, lambda config: command.downgrade(config, before))
        assert not NEW_TABLES & await tables(empty_db_url)
        async with engine.connect() as conn:
            kept = (await conn.execute(text("SELECT COUNT(*) FROM conversations"))).scalar_one()
        assert kept == 1

        await upgrade_head(empty_db_url)
        assert await tables(empty_db_url) >= NEW_TABLES
    finally:
        await engine.dispose()


def vote(user: str, value: Vote, ts: str = "1764580000.000100") -> VoteCast:
    return VoteCast("T1", "C1", ts, user, value)


async def test_the_database_refuses_a_second_vote_row_for_one_person_and_answer(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    def row(user: str) -> FeedbackVote:
        return FeedbackVote(
            channel_id="C1", message_ts="1.000001", user_id=user, value="up", answered_at=datetime.now(UTC)
        )

    async with sessions() as session:
        session.add(row("U1"))
        await session.commit()
        session.add(row("U1"))
        with pytest.raises(IntegrityError):
            await session.commit()
        await session.rollback()
        session.add(row("U2"))
        await session.commit()


async def test_a_vote_replaces_the_persons_earlier_one_and_counts_by_the_answers_day(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions.begin() as session:
        await record_vote(session, vote("U1", Vote.UP))
        await record_vote(session, vote("U1", Vote.DOWN))
        await record_vote(session, vote("U2", Vote.UP))
        await record_vote(session, vote("U2", Vote.UP, ts="1764690000.000100"))  # the next day's answer
    async with sessions() as session:
        assert await find_vote(session, "C1", "1764580000.000100", "U1") is Vote.DOWN
        day = datetime(2025, 12, 1, tzinfo=UTC)
        counts = await feedback_counts(session, day, datetime(2025, 12, 2, tzinfo=UTC))
    assert (counts.up, counts.down, counts.rated_answers) == (1, 1, 1)


async def test_the_latest_channel_in_view_is_kept_per_dm(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions.begin() as session:
        await agent_context.remember_viewing(session, "T1", "D1", "U1", "C7")
        await agent_context.remember_viewing(session, "T1", "D1", "U1", "C8")
        await agent_context.remember_viewing(session, "T1", "D2", "U2", "C9")
    async with sessions() as session:
        assert await agent_context.viewing_channel(session, "T1", "D1") == "C8"
        assert await agent_context.viewing_channel(session, "T1", "D2") == "C9"
        assert await agent_context.viewing_channel(session, "T2", "D1") is None


async def test_an_older_context_handled_late_does_not_replace_a_newer_one(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    newer, older = datetime(2026, 12, 1, 10, 0, 2, tzinfo=UTC), datetime(2026, 12, 1, 10, 0, 1, tzinfo=UTC)
    async with sessions.begin() as session:
        await agent_context.remember_viewing(session, "T1", "D1", "U1", "C8", newer)
        await agent_context.remember_viewing(session, "T1", "D1", "U1", "C7", older)
    async with sessions() as session:
        assert await agent_context.viewing_channel(session, "T1", "D1") == "C8"
