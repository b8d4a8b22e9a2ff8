"""Storing a turn's tool rounds: the `tool_calls` rows and the exchange kept on the reply for later
turns. Functions take a session, never commit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import Message, ToolCallRecord, utcnow


@dataclass(frozen=True)
class ToolCallRow:
    """One call as recorded: a digest of the arguments, never the arguments or the result."""

    message_id: int
    conversation_id: int
    round: int
    tool: str
    arguments_sha256: str
    duration_ms: int
    outcome: str  # ok | error | timeout | denied | cancelled


async def store_tool_round(
    session: AsyncSession,
    message_id: int,
    exchange: Sequence[Mapping[str, object]] | None,
    rows: Sequence[ToolCallRow],
    created_at: datetime | None = None,
) -> None:
    """The reply's whole exchange so far (rewritten each round; None: left as it is, a round cut
    short has no whole exchange) and this round's call rows."""
    if exchange is not None:
        await session.execute(
            update(Message).where(Message.id == message_id).values(tool_exchange=[dict(e) for e in exchange])
        )
    now = created_at or utcnow()
    session.add_all(
        ToolCallRecord(
            message_id=row.message_id,
            conversation_id=row.conversation_id,
            round=row.round,
            tool=row.tool[:128],
            arguments_sha256=row.arguments_sha256,
            duration_ms=row.duration_ms,
            outcome=row.outcome,
            created_at=now,
        )
        for row in rows
    )
    await session.flush()
