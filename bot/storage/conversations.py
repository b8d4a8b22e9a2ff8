"""Repository for conversations and their messages. Functions take a session and never commit."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, bindparam, delete, exists, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.db import dialect_name
from bot.storage.models import Base, Conversation, ConversationKind, Message, MessageStatus, Role, utcnow
from bot.storage.signals import presence_name

# Replies written before leases existed (by pre-0002 code during a rolling upgrade) have none: such
# a reply counts as dead only once no call could still run for it (the old rule, with the default
# LLM_TOTAL_TIMEOUT of 300 s plus 120 s); callers pass the configured one.
LEGACY_STALE_AFTER = timedelta(seconds=300 + 120)


def storable(text: str) -> str:
    """Text as the database can keep it: PostgreSQL refuses U+0000, which model output can hold."""
    return text.replace("\x00", "")


@dataclass(frozen=True)
class ConversationKey:
    """One Slack thread (or terminal session): the unit of conversation."""

    team_id: str
    channel_id: str
    thread_ts: str


_TABLE = Base.metadata.tables["conversations"]  # typed as a Table (a model's __table__ is not)
# Built once: the admission's hot path runs these for every event, and building a statement (its
# expressions, then its cache key) cost more CPU than executing it (py-spy, bench (d), SQLite).
_KEY_MATCHES = (
    Conversation.team_id == bindparam("team_id"),
    Conversation.channel_id == bindparam("channel_id"),
    Conversation.thread_ts == bindparam("thread_ts"),
)
_FIND_ID = select(Conversation.id).where(*_KEY_MATCHES)
_FIND_ID_LOCKED = _FIND_ID.with_for_update()
_CREATE = {
    name: insert(_TABLE)
    .on_conflict_do_nothing(index_elements=["team_id", "channel_id", "thread_ts"])
    .returning(_TABLE.c.id)
    for name, insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}


def _key_params(key: ConversationKey) -> dict[str, str]:
    return {"team_id": key.team_id, "channel_id": key.channel_id, "thread_ts": key.thread_ts}


async def find_conversation_id(
    session: AsyncSession, key: ConversationKey, *, lock: bool = False
) -> int | None:
    """`lock`: hold the row until the transaction ends (PostgreSQL; SQLite has one writer anyway)."""
    stmt = _FIND_ID_LOCKED if lock else _FIND_ID
    return (await session.execute(stmt, _key_params(key))).scalar_one_or_none()


async def create_conversation(
    session: AsyncSession, key: ConversationKey, kind: ConversationKind
) -> int | None:
    """Insert the thread's row in one statement and return its id; None when it exists already (or a
    concurrent writer inserted it first: PostgreSQL then waited for that writer's commit). The row
    inserted here is held by this transaction till it ends, as a locked one is."""
    now = utcnow()
    values = {**_key_params(key), "kind": kind, "created_at": now, "updated_at": now}
    created: int | None = (
        await session.execute(_CREATE.get(dialect_name(session), _CREATE["sqlite"]), values)
    ).scalar_one_or_none()
    return created


async def conversation_id(session: AsyncSession, key: ConversationKey, kind: ConversationKind) -> int:
    """The thread's conversation, created if missing; race-safe: two replicas creating the same
    thread end up with one row."""
    found = await find_conversation_id(session, key)
    if found is not None:
        return found
    created = await create_conversation(session, key, kind) or await find_conversation_id(session, key)
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


# The hot writes of a turn as Core statements on the tables, built once; the columns they write come
# with each execution (the parameters' keys, besides the WHERE's). Built per write as ORM statements,
# with the session's synchronisation and flush, the messages' writes cost the event loop about 10 %
# of its CPU in bench (d) (py-spy).
_MESSAGES = Base.metadata.tables[Message.__tablename__]
_CONVERSATIONS = Base.metadata.tables[Conversation.__tablename__]
_ADD_MESSAGE = insert(_MESSAGES).returning(_MESSAGES.c.id)
_TOUCH_CONVERSATION = update(_CONVERSATIONS).where(_CONVERSATIONS.c.id == bindparam("conversation"))
# A reply still `streaming`, by id.
_STREAMING_REPLY = update(_MESSAGES).where(
    _MESSAGES.c.id == bindparam("reply_id"), _MESSAGES.c.status == MessageStatus.STREAMING
)


async def add_message(
    session: AsyncSession,
    conversation_id: int,
    role: Role,
    content: str,
    *,
    status: MessageStatus = MessageStatus.COMPLETE,
    user_id: str | None = None,
    slack_ts: str | None = None,
    request_id: str | None = None,
    lease_until: datetime | None = None,
    touch: bool = True,
) -> int:
    """Append a message to the conversation and mark the conversation updated (`touch=False`: a later
    add in the same transaction will); returns its id."""
    now = utcnow()
    values = {
        "conversation_id": conversation_id,
        "role": role,
        "content": storable(content),
        "status": status,
        "user_id": user_id,
        "slack_ts": slack_ts,
        "slack_ts_all": [slack_ts] if slack_ts else None,
        "created_at": now,
        "request_id": request_id,
        "lease_expires_at": lease_until,
    }
    message_id = (await session.execute(_ADD_MESSAGE, values)).scalar_one()
    if touch:
        await session.execute(_TOUCH_CONVERSATION, {"conversation": conversation_id, "updated_at": now})
    return int(message_id)


async def finish_message(
    session: AsyncSession,
    message_id: int,
    *,
    content: str,
    status: MessageStatus,
    slack_refs: Sequence[str] = (),
    slack_parts: Sequence[dict[str, object]] = (),
) -> bool:
    """End a reply that is still `streaming`; False when it was already ended (e.g. recovered).

    Conditional, so a late writer never overwrites what recovery or another ending stored.
    """
    values = _slack_values(slack_refs, slack_parts)
    values.update(content=storable(content), status=status, lease_expires_at=None)
    result = await session.execute(_STREAMING_REPLY, {"reply_id": message_id, **values})
    return _rowcount(result) == 1


async def checkpoint_message(
    session: AsyncSession,
    message_id: int,
    *,
    content: str,
    slack_refs: Sequence[str],
    slack_parts: Sequence[dict[str, object]] = (),
    lease_until: datetime | None = None,
) -> None:
    """Save a still-streaming reply's text so far (the status stays `streaming`), renewing its lease."""
    values = _slack_values(slack_refs, slack_parts)
    values["content"] = storable(content)
    if lease_until is not None:
        values["lease_expires_at"] = lease_until
    await session.execute(_STREAMING_REPLY, {"reply_id": message_id, **values})


async def renew_leases(session: AsyncSession, message_ids: Collection[int], lease_until: datetime) -> None:
    """Renew the leases of the replies still streaming among `message_ids`, in one statement."""
    await session.execute(
        update(Message)
        .where(Message.id.in_(message_ids), Message.status == MessageStatus.STREAMING)
        .values(lease_expires_at=lease_until)
    )


# A reply's replica is taken for dead before the reply's lease runs out when its listening connection
# is gone from pg_stat_activity (a killed process's connections end at once) and the turn's place
# was not renewed for this long (a replica whose listener only reconnects keeps renewing its places
# every few seconds). Bench (f): a dead replica's 35 notes in one workspace need 40 s of Slack's
# chat.update budget; found 20-23 s after the kill by their leases, the last came after 61 s.
HOLDER_GONE_AFTER = timedelta(seconds=10)


def _lease_expired(
    now: datetime, legacy_after: timedelta, place_lease: timedelta | None = None
) -> ColumnElement[bool]:
    """The reply's process is dead: its lease expired, or (PostgreSQL, `place_lease` given: the
    turn places' lease) its turn's place says its replica is gone."""
    legacy_dead = and_(Message.lease_expires_at.is_(None), Message.created_at < now - legacy_after)
    dead = or_(Message.lease_expires_at < now, legacy_dead)
    if place_lease is None:
        return dead
    # The gone replica's started place, and no later turn of the conversation running elsewhere (a
    # dead replica's place outlives its turn until purged: the next turn may be streaming now).
    gone = text(
        "EXISTS (SELECT 1 FROM turn_places tp WHERE tp.conversation_id = messages.conversation_id"
        " AND tp.started_at IS NOT NULL AND tp.expires_at < now() + CAST(:renewed_before AS interval)"
        " AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a"
        " WHERE a.application_name = :presence || tp.holder)"
        " AND NOT EXISTS (SELECT 1 FROM turn_places other WHERE other.conversation_id = tp.conversation_id"
        " AND other.started_at IS NOT NULL AND other.holder <> tp.holder AND other.expires_at > now()))"
    ).bindparams(renewed_before=place_lease - HOLDER_GONE_AFTER, presence=presence_name(""))
    return or_(dead, gone)


async def expired_streaming_messages(
    session: AsyncSession,
    now: datetime,
    *,
    ignore_leases: bool = False,
    kept: Collection[int] = (),
    legacy_after: timedelta = LEGACY_STALE_AFTER,
    limit: int = 100,
    place_lease: timedelta | None = None,
) -> Sequence[tuple[Message, Conversation]]:
    """Replies still `streaming` whose lease expired (or all of them), with their conversation,
    except those in `kept`: this process is streaming them and renewing their lease, whatever the
    row says after an outage.

    On PostgreSQL rows another replica is claiming right now are skipped, not waited for.
    """
    stmt = (
        select(Message, Conversation)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(Message.status == MessageStatus.STREAMING)
        .order_by(Message.id)
        .limit(limit)
    )
    if not ignore_leases:
        stmt = stmt.where(_lease_expired(now, legacy_after, _on_postgresql(session, place_lease)))
    if kept:
        stmt = stmt.where(Message.id.not_in(list(kept)))
    if dialect_name(session) == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True, of=Message)
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


async def claim_for_recovery(
    session: AsyncSession,
    message_id: int,
    now: datetime,
    *,
    ignore_leases: bool = False,
    legacy_after: timedelta = LEGACY_STALE_AFTER,
    place_lease: timedelta | None = None,
) -> bool:
    """Mark an expired reply `interrupted`; True for the one caller that changed it.

    The conditional UPDATE is the claim: of two replicas, only one sees its row change.
    """
    stmt = update(Message).where(Message.id == message_id, Message.status == MessageStatus.STREAMING)
    if not ignore_leases:
        stmt = stmt.where(_lease_expired(now, legacy_after, _on_postgresql(session, place_lease)))
    result = await session.execute(stmt.values(status=MessageStatus.INTERRUPTED, lease_expires_at=None))
    return _rowcount(result) == 1


async def requester(session: AsyncSession, message: Message) -> str | None:
    """The person whose message the assistant reply answers (the newest user message before it)."""
    stmt = (
        select(Message.user_id)
        .where(
            Message.conversation_id == message.conversation_id,
            Message.role == Role.USER,
            Message.id < message.id,
        )
        .order_by(Message.id.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


def _slack_values(refs: Sequence[str], parts: Sequence[dict[str, object]]) -> dict[str, object]:
    values: dict[str, object] = {}
    if refs:
        values.update(slack_ts=refs[0], slack_ts_all=list(refs))
    if parts:
        values["slack_parts"] = [dict(part) for part in parts]
    return values


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _on_postgresql(session: AsyncSession, place_lease: timedelta | None) -> timedelta | None:
    """Turn places and pg_stat_activity exist on PostgreSQL only."""
    return place_lease if dialect_name(session) == "postgresql" else None


async def delete_empty_conversation(session: AsyncSession, key: ConversationKey) -> None:
    """Delete a thread's conversation that holds no message yet (admission opened it, then refused)."""
    await session.execute(
        delete(Conversation).where(
            Conversation.team_id == key.team_id,
            Conversation.channel_id == key.channel_id,
            Conversation.thread_ts == key.thread_ts,
            ~exists().where(Message.conversation_id == Conversation.id),
        )
    )
