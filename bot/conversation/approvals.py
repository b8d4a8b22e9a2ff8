"""The record of tool-call approvals: a question opened in a thread, the asker's answer, or its expiry.

Kept in the database so a press reaching any replica (HTTP behind a load balancer, several Socket
Mode connections) decides for the process that asked; that process reads it back. Platform-free: the
Slack edge (bot.slack.approval) asks and takes the presses.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.keys import ConversationKey
from bot.storage.models import ToolApprovalRow, utcnow
from bot.storage.tool_approvals import (
    APPROVED,
    DENIED,
    EXPIRED,
    PENDING,
    add_approval,
    find_approval,
    settle,
    status_of,
)


@dataclass(frozen=True)
class Answer:
    approved: bool
    by: str | None  # who pressed; None: nobody (expired)


class Press(enum.StrEnum):
    RECORDED = "recorded"
    NOT_THE_ASKER = "not_the_asker"
    NOT_WAITING = "not_waiting"  # answered already, expired, or unknown


@dataclass(frozen=True)
class PressOutcome:
    press: Press
    asker: str | None = None


class ApprovalBook:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], wait: float) -> None:
        """`wait`: how long an asker waits (TOOL_APPROVAL_TIMEOUT); a question still pending well past
        it was asked by a process that is gone, and no press may decide it any more."""
        self._sessions = sessions
        self._stale_after = timedelta(seconds=wait + 60)

    async def open(self, request_id: str, key: ConversationKey, asker: str, tool: str) -> None:
        async with self._sessions() as session, session.begin():
            add_approval(
                session,
                ToolApprovalRow(
                    id=request_id,
                    team_id=key.team_id,
                    channel_id=key.channel_id,
                    thread_ts=key.thread_ts,
                    asker_id=asker,
                    tool=tool[:64],
                    status=PENDING,
                ),
            )

    async def press(self, request_id: str, user: str, approved: bool) -> PressOutcome:
        async with self._sessions() as session, session.begin():
            row = await find_approval(session, request_id)
            if row is None or row.status != PENDING:
                return PressOutcome(Press.NOT_WAITING)
            if row.created_at < utcnow() - self._stale_after:
                await settle(session, request_id, EXPIRED, None, utcnow())
                return PressOutcome(Press.NOT_WAITING)
            if row.asker_id != user:
                return PressOutcome(Press.NOT_THE_ASKER, row.asker_id)
            won = await settle(session, request_id, APPROVED if approved else DENIED, user, utcnow())
            return PressOutcome(Press.RECORDED if won else Press.NOT_WAITING, row.asker_id)

    async def answer(self, request_id: str) -> Answer | None:
        """The decision, or None while it is pending."""
        async with self._sessions() as session:
            found = await status_of(session, request_id)
        if found is None or found[0] == PENDING:
            return None
        status, by = found
        return Answer(status == APPROVED, by)

    async def expire(self, request_id: str) -> Answer | None:
        """End a pending question unanswered: None when it expired now, else the answer that came first."""
        async with self._sessions() as session, session.begin():
            if await settle(session, request_id, EXPIRED, None, utcnow()):
                return None
        answer = await self.answer(request_id)
        return None if answer is None or answer.by is None else answer
