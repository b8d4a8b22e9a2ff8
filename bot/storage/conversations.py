"""Repository for conversations and their messages. Functions take a session and never commit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import Conversation, ConversationKind, Message, MessageStatus, Role, utcnow


@dataclass(frozen=True)
class ConversationKey:
    """One Slack thread (or terminal session): the unit of conversation."""

    team_id: str
    channel_id: str
    thread_ts: str


async def find_conversation(session: AsyncSession, key: ConversationKey) -> Conversation | None:
    stmt = select(Conversation).where(
        Conversation.team_id == key.team_id,
        Conversation.channel_id == key.channel_id,
        Conversation.thread_ts == key.thread_ts,
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_or_create_conversation(
    session: AsyncSession, key: ConversationKey, kind: ConversationKind
) -> Conversation:
    """Race-safe: two replicas creating the same thread end up with one row."""
    existing = await find_conversation(session, key)
    if existing is not None:
        return existing
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    now = utcnow()
    stmt = (
        insert(Conversation)
        .values(
            team_id=key.team_id,
            channel_id=key.channel_id,
            thread_ts=key.thread_ts,
            kind=kind,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["team_id", "channel_id", "thread_ts"])
    )
    await session.execute(stmt)
    created = await find_conversation(session, key)
    assert created is not None  # inserted above, or by a concurrent writer
    return created


async def load_history(session: AsyncSession, conversation_id: int) -> Sequence[Message]:
    """All messages of a conversation in order, in one indexed query."""
    stmt = (
        select(Message)
        .where(Message.conversation_id == conversation_id)
        .order_by(Message.created_at, Message.id)
    )
    return (await session.execute(stmt)).scalars().all()


async def add_message(
    session: AsyncSession,
    conversation_id: int,
    role: Role,
    content: str,
    *,
    status: MessageStatus = MessageStatus.COMPLETE,
    user_id: str | None = None,
    slack_ts: str | None = None,
) -> Message:
    message = Message(
        conversation_id=conversation_id,
        role=role,
        content=content,
        status=status,
        user_id=user_id,
        slack_ts=slack_ts,
        slack_ts_all=[slack_ts] if slack_ts else None,
        created_at=utcnow(),
    )
    session.add(message)
    await session.execute(
        update(Conversation).where(Conversation.id == conversation_id).values(updated_at=utcnow())
    )
    await session.flush()
    return message


async def finish_message(
    session: AsyncSession,
    message_id: int,
    *,
    content: str,
    status: MessageStatus,
    slack_refs: Sequence[str] = (),
) -> None:
    values: dict[str, object] = {"content": content, "status": status}
    if slack_refs:
        values.update(slack_ts=slack_refs[0], slack_ts_all=list(slack_refs))
    await session.execute(update(Message).where(Message.id == message_id).values(**values))


async def checkpoint_message(
    session: AsyncSession, message_id: int, *, content: str, slack_refs: Sequence[str]
) -> None:
    """Save a still-streaming reply's text so far (the status stays `streaming`)."""
    values: dict[str, object] = {"content": content}
    if slack_refs:
        values.update(slack_ts=slack_refs[0], slack_ts_all=list(slack_refs))
    await session.execute(
        update(Message)
        .where(Message.id == message_id, Message.status == MessageStatus.STREAMING)
        .values(**values)
    )


async def stale_streaming_messages(
    session: AsyncSession, started_before: datetime, limit: int = 100
) -> Sequence[tuple[Message, Conversation]]:
    """Assistant messages still `streaming` that began before `started_before`, with their conversation."""
    stmt = (
        select(Message, Conversation)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(Message.status == MessageStatus.STREAMING, Message.created_at < started_before)
        .order_by(Message.id)
        .limit(limit)
    )
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]
