"""Repository for turn places (bot.storage.models.TurnPlace), PostgreSQL only: the line of turns of
each conversation across replicas. Functions take a session and never commit."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Interval, and_, bindparam, delete, func, insert, null, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import Base, Conversation, TurnPlace

# Set in records whose writer clears them once the turn stored its reply (bot.conversation.handoff).
BEGINS_KEY = "cleared_once_stored"

# The placeholder showing the turn before its reply is stored, in the record: a replica adopting the
# turn answers in it rather than leave it saying "Thinking…" for good.
PLACEHOLDER_KEY = "placeholder"

# Signalled (payload: the conversation id) when a turn leaves its line.
TURN_ENDED = "bot_turn_ended"
# Signalled when a draining replica handed its waiting turns off: the others adopt them at once.
TURNS_HANDED_OFF = "bot_turns_handed_off"

_LEAVE = text(
    # One statement. Signalled whether or not a later place is visible to this statement: a claim
    # committing at the same moment may have seen this place still live and wait for the signal.
    # Only the holder's: a place adopted by another replica is that replica's to leave.
    "WITH gone AS (DELETE FROM turn_places WHERE id = :id AND holder = :holder RETURNING conversation_id) "
    "SELECT pg_notify(:channel, CAST(gone.conversation_id AS text)) FROM gone"
).bindparams(bindparam("id"), bindparam("holder"), bindparam("channel", TURN_ENDED))

# Its lease ran out before its turn stored its reply (the record is cleared then: from there recovery
# finishes the reply with a note), and it says what the turn was: another replica adopts it and runs
# the turn again. A turn that started but died before storing its reply was lost otherwise: in bench
# (f) one of a killed replica's 50 turns showed nothing at all (its status, then silence).
_PLACES = Base.metadata.tables[TurnPlace.__tablename__]  # Core: the statements below are built once
_ORPHAN = and_(
    _PLACES.c.expires_at <= func.now(),
    _PLACES.c.arrival.is_not(None),
    or_(_PLACES.c.started_at.is_(None), text(f"(turn_places.arrival ->> '{BEGINS_KEY}') = 'true'")),
)
# A dead replica's turn that stored its reply, the reply not recovered yet (a `streaming` message in
# the conversation): the turns after it wait for recovery, whose note (posted as a message of its
# own when the turn died before its first) then comes before their answers; in bench (f) the next
# turn's answer was posted before such a note. Bounded: a recovery that never comes holds the thread
# up for at most RECOVERY_WAIT_SECONDS after the place's lease ran out (so does a place whose reply
# ended but whose leave was lost, while a later reply of the conversation streams).
RECOVERY_WAIT_SECONDS = 120
_UNRECOVERED_SQL = (
    "(turn_places.expires_at <= now()"
    f" AND turn_places.expires_at > now() - interval '{RECOVERY_WAIT_SECONDS} seconds'"
    " AND turn_places.arrival IS NULL AND turn_places.started_at IS NOT NULL"
    " AND EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = turn_places.conversation_id"
    " AND m.status = 'streaming'))"
)
# A place that holds up the turns after it: live, an orphan about to be adopted (so that turns of
# a dead replica keep their order when they are adopted one by one), or one waiting for recovery.
_IN_LINE = or_(_PLACES.c.expires_at > func.now(), _ORPHAN, text(_UNRECOVERED_SQL))

# Built once, on the table, for every claim and every stored reply: built per call as ORM statements
# they went through the session's bulk-DML path and a new cache key each time (py-spy, bench (d)).
# `line` is the new place's conversation: `conversation_id` names the inserted column's own parameter.
_TAKE = (
    insert(_PLACES)
    .values(expires_at=func.now() + bindparam("lease", type_=Interval()))
    .returning(
        _PLACES.c.id,
        select(func.count())
        .select_from(_PLACES)
        .where(_PLACES.c.conversation_id == bindparam("line"), _IN_LINE)
        .scalar_subquery(),
    )
)
_BEGIN_REPLY = (
    update(_PLACES)
    .where(_PLACES.c.id == bindparam("place"), _PLACES.c.holder == bindparam("replica"))
    .values(arrival=null(), started_at=func.coalesce(_PLACES.c.started_at, func.now()))
    .returning(_PLACES.c.id)
)

_CHECK = text(
    # One statement per look at the line, and the start mark rides on the last one: the place is
    # marked started (never to be adopted) only while this replica still holds it unexpired, so a
    # turn runs on one replica whichever of the mark and an adoption comes first.
    "WITH ahead AS ("
    " SELECT max(expires_at) FILTER (WHERE expires_at > now()) AS latest,"
    " count(*) FILTER (WHERE expires_at <= now() AND arrival IS NOT NULL) AS orphans,"
    " count(*) FILTER (WHERE expires_at <= now() AND arrival IS NULL) AS unrecovered"
    " FROM turn_places WHERE conversation_id = :conversation_id AND id < :id"
    " AND (expires_at > now() OR (arrival IS NOT NULL"
    f" AND (started_at IS NULL OR (arrival ->> '{BEGINS_KEY}') = 'true')) OR {_UNRECOVERED_SQL})"
    "), mark AS ("
    " UPDATE turn_places SET started_at = now(), expires_at = now() + CAST(:lease AS interval)"
    " WHERE id = :id AND holder = :holder AND expires_at > now()"
    " AND (SELECT latest IS NULL AND orphans = 0 AND unrecovered = 0 FROM ahead) RETURNING id"
    ") SELECT ahead.latest, ahead.orphans, ahead.unrecovered, now(), (SELECT count(*) FROM mark)"
    " FROM ahead"
)


# The record is `json` (not `jsonb`): merged as jsonb, stored back as json.
_NOTE_PLACEHOLDER = text(
    "UPDATE turn_places SET arrival = CAST(CAST(arrival AS jsonb)"
    f" || jsonb_build_object('{PLACEHOLDER_KEY}', CAST(:ts AS text)) AS json)"
    " WHERE id = :id AND holder = :holder AND arrival IS NOT NULL RETURNING id"
)


@dataclass(frozen=True)
class LineCheck:
    """One look at a turn's line: `started` (the turn may run), else what holds it up; `lost` when
    nothing does but the place is not this replica's any more (adopted, or handed off)."""

    started: bool
    wait: float = 0.0  # seconds until the last live place before it expires at the latest
    orphans: int = 0  # places before it waiting to be adopted
    unrecovered: int = 0  # dead replicas' places before it whose replies wait for recovery
    lost: bool = False


@dataclass(frozen=True)
class AdoptedPlace:
    id: int
    conversation_id: int
    arrival: Any  # the JSON record (bot.conversation.handoff)


async def take_place(
    session: AsyncSession,
    conversation_id: int,
    holder: str,
    lease: timedelta,
    arrival: Mapping[str, object] | None = None,
) -> tuple[int, bool]:
    """Append a place to the conversation's line, with what another replica needs to run its turn;
    returns its id and whether it is first (nothing in line before it). The caller holds the
    conversation's row lock, so every earlier place of the line is committed and visible, and ids
    follow admission order."""
    params = {
        "conversation_id": conversation_id,
        "line": conversation_id,
        "holder": holder,
        "lease": lease,
        "arrival": dict(arrival) if arrival is not None else None,
    }
    row = (await session.execute(_TAKE, params)).one()
    return int(row[0]), int(row[1]) == 0


async def check_line(
    session: AsyncSession, conversation_id: int, place_id: int, holder: str, lease: timedelta
) -> LineCheck:
    """Whether the turn at `place_id` may run now, marking it started if so. Times are the database's
    clock (replicas' clocks may differ)."""
    params = {"conversation_id": conversation_id, "id": place_id, "holder": holder, "lease": lease}
    row: Any = (await session.execute(_CHECK, params)).one()
    latest, orphans, unrecovered, now, marked = row[0], int(row[1]), int(row[2]), row[3], int(row[4])
    if marked:
        return LineCheck(started=True)
    if latest is None and orphans == 0 and unrecovered == 0:
        return LineCheck(started=False, lost=True)
    wait = 0.0 if latest is None else max(0.0, float((latest - now).total_seconds()))
    return LineCheck(started=False, wait=wait, orphans=orphans, unrecovered=unrecovered)


async def begin_reply(session: AsyncSession, place_id: int, holder: str) -> bool:
    """In the transaction storing the turn's reply: clear the record (not to be adopted from now on)
    and mark the place started (a turn first in line was not marked before); False when the place is
    not `holder`'s any more (adopted: this replica was taken for dead)."""
    found = await session.execute(_BEGIN_REPLY, {"place": place_id, "replica": holder})
    return found.first() is not None


async def note_placeholder(session: AsyncSession, place_id: int, holder: str, ts: str) -> bool:
    """Add the placeholder showing the turn (its ts) to the place's record; False, and nothing done,
    once the record is cleared (the stored reply carries the ts from then on) or the place is another
    replica's."""
    found = await session.execute(_NOTE_PLACEHOLDER, {"id": place_id, "holder": holder, "ts": ts})
    return found.first() is not None


async def others_in_line(session: AsyncSession, conversation_id: int, place_id: int) -> bool:
    """Whether the conversation's line holds a place besides `place_id` (live or not: an orphan's
    turn is still to be run by the replica adopting it)."""
    others = (
        select(TurnPlace.id)
        .where(TurnPlace.conversation_id == conversation_id, TurnPlace.id != place_id)
        .limit(1)
    )
    return (await session.execute(others)).first() is not None


async def leave_place(session: AsyncSession, place_id: int, holder: str) -> None:
    """Delete the place and signal TURN_ENDED on commit (nothing when it was gone already, or is
    another replica's now)."""
    await session.execute(_LEAVE, {"id": place_id, "holder": holder})


async def adopt_places(
    session: AsyncSession, holder: str, lease: timedelta, limit: int
) -> list[AdoptedPlace]:
    """Take over orphans (their holder died or drained before their turn stored its reply), oldest first,
    keeping their ids so their threads' order holds. Rows another replica is adopting at the same
    moment are skipped, and the conditions are checked again under the row lock: each orphan goes
    to one replica."""
    pick = (
        select(TurnPlace.id)
        .where(_ORPHAN)
        .order_by(TurnPlace.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    stmt = (
        update(TurnPlace)
        .where(TurnPlace.id.in_(pick), _ORPHAN)
        .values(holder=holder, expires_at=func.now() + lease)
        .returning(TurnPlace.id, TurnPlace.conversation_id, TurnPlace.arrival)
    )
    rows = (await session.execute(stmt)).all()
    return sorted((AdoptedPlace(int(r[0]), int(r[1]), r[2]) for r in rows), key=lambda p: p.id)


async def hand_off(session: AsyncSession, holder: str, place_ids: Collection[int]) -> list[int]:
    """Give up places whose turns have not started (a draining replica): they become orphans now,
    and TURNS_HANDED_OFF tells the other replicas on commit. Returns the places given up."""
    if not place_ids:
        return []
    stmt = (
        update(TurnPlace)
        .where(
            TurnPlace.holder == holder,
            TurnPlace.id.in_(list(place_ids)),
            TurnPlace.started_at.is_(None),
            TurnPlace.arrival.is_not(None),
        )
        .values(holder="", expires_at=func.now() - timedelta(seconds=1))
        .returning(TurnPlace.id)
    )
    given = [int(i) for i in (await session.execute(stmt)).scalars()]
    if given:
        await session.execute(select(func.pg_notify(TURNS_HANDED_OFF, "")))
    return given


async def renew_places(
    session: AsyncSession, holder: str, place_ids: Collection[int], lease: timedelta
) -> None:
    """Extend the lease of the places this replica holds (one statement for all of them)."""
    if place_ids:
        await session.execute(
            update(TurnPlace)
            .where(TurnPlace.holder == holder, TurnPlace.id.in_(list(place_ids)))
            .values(expires_at=func.now() + lease)
        )


async def purge_dead_places(session: AsyncSession, older_than: timedelta) -> int:
    """Delete places whose lease ran out long ago (their replica died); they already block nobody."""
    result = await session.execute(delete(TurnPlace).where(TurnPlace.expires_at < func.now() - older_than))
    return int(getattr(result, "rowcount", 0) or 0)


async def thread_has_live_turn(session: AsyncSession, team_id: str, channel_id: str, thread_ts: str) -> bool:
    """Some replica is answering (or about to answer) in this thread now."""
    stmt = (
        select(TurnPlace.id)
        .join(Conversation, Conversation.id == TurnPlace.conversation_id)
        .where(
            Conversation.team_id == team_id,
            Conversation.channel_id == channel_id,
            Conversation.thread_ts == thread_ts,
            TurnPlace.expires_at > func.now(),
        )
        .limit(1)
    )
    return (await session.execute(stmt)).first() is not None
