"""What a person views in Slack beside the bot's DM (Slack's app_context_changed), per DM channel."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.db import dialect_name
from bot.storage.models import AgentContext, utcnow


async def remember_viewing(
    session: AsyncSession,
    team_id: str,
    channel_id: str,
    user_id: str | None,
    viewing: str | None,
    changed_at: datetime | None = None,
) -> None:
    """Keep the context Slack saw last (`changed_at`, the event's time; default now): events handled
    out of order never bring back an older one. `viewing` None: nothing Slack names is in view."""
    insert = pg_insert if dialect_name(session) == "postgresql" else sqlite_insert
    at = changed_at or utcnow()
    stmt = insert(AgentContext).values(
        team_id=team_id, channel_id=channel_id, user_id=user_id, viewing_channel_id=viewing, changed_at=at
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["team_id", "channel_id"],
            set_={"viewing_channel_id": viewing, "user_id": user_id, "changed_at": at},
            where=AgentContext.changed_at <= at,
        )
    )


async def viewing_channel(session: AsyncSession, team_id: str, channel_id: str) -> str | None:
    return await session.scalar(
        select(AgentContext.viewing_channel_id).where(
            AgentContext.team_id == team_id, AgentContext.channel_id == channel_id
        )
    )
