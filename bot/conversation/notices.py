"""How often a refused person is told why: at most once per period (an hour), across replicas."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.admission import Arrival
from bot.storage.models import utcnow
from bot.storage.refusal_notices import claim_notice

NOTICE_EVERY = timedelta(hours=1)


class NoticeLog:
    """The `RefusalNotices` of Turns, kept in the database so every replica sees the last note."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, every: timedelta = NOTICE_EVERY
    ) -> None:
        self._sessions, self._every = sessions, every

    async def may_tell(self, arrival: Arrival) -> bool:
        """Raises the database's errors (UNAVAILABLE); the caller then stays silent."""
        async with self._sessions.begin() as session:
            return await claim_notice(
                session, arrival.key.team_id, arrival.user_id, now=utcnow(), every=self._every
            )
