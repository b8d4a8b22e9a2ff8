"""Per-channel settings rows and the admin audit log. Functions take a session and never commit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import AdminAudit, ChannelSettingsRow, utcnow


@dataclass(frozen=True)
class AuditEntry:
    """One audited change, as `/glm audit` shows it."""

    team_id: str
    actor_id: str
    target_kind: str  # channel | user | workspace
    target_id: str
    action: str
    before: Mapping[str, object] | None
    after: Mapping[str, object] | None
    created_at: datetime


_FIND = select(ChannelSettingsRow).where(
    ChannelSettingsRow.team_id == bindparam("team_id"),
    ChannelSettingsRow.channel_id == bindparam("channel_id"),
)  # built once: it runs for every event whose channel's cached settings ran out
_FIND_FOR_UPDATE = _FIND.with_for_update()


async def find_channel_settings(
    session: AsyncSession, team_id: str, channel_id: str, *, for_update: bool = False
) -> ChannelSettingsRow | None:
    """The channel's row, or None when nobody set anything; `for_update` locks it (PostgreSQL) so
    two admins saving at once are audited in order, each with the `before` the other left."""
    query = _FIND_FOR_UPDATE if for_update else _FIND
    params = {"team_id": team_id, "channel_id": channel_id}
    return (await session.scalars(query, params)).one_or_none()


async def channel_settings_rows(
    session: AsyncSession, team_id: str, limit: int = 20
) -> Sequence[ChannelSettingsRow]:
    """Channels of the workspace with their own settings, most recently changed first."""
    rows = await session.scalars(
        select(ChannelSettingsRow)
        .where(ChannelSettingsRow.team_id == team_id)
        .order_by(ChannelSettingsRow.updated_at.desc(), ChannelSettingsRow.id.desc())
        .limit(limit)
    )
    return list(rows)


async def write_channel_settings(
    session: AsyncSession,
    row: ChannelSettingsRow | None,
    team_id: str,
    channel_id: str,
    values: Mapping[str, object],
    *,
    actor_id: str,
) -> None:
    """Insert or update the channel's row with `values` (column name -> value)."""
    if row is None:
        row = ChannelSettingsRow(team_id=team_id, channel_id=channel_id)
        session.add(row)
    for name, value in values.items():
        if name not in _SETTING_COLUMNS:
            raise ValueError(f"not a channel setting: {name}")
        setattr(row, name, value)
    row.updated_by = actor_id
    row.updated_at = utcnow()
    await session.flush()


_SETTING_COLUMNS = frozenset(
    {"mode", "system_prompt", "replace_prompt", "model", "max_output_tokens", "followups", "tools"}
)


async def add_audit(
    session: AsyncSession,
    *,
    team_id: str,
    actor_id: str,
    target_kind: str,
    target_id: str,
    action: str,
    before: Mapping[str, object] | None,
    after: Mapping[str, object] | None,
) -> None:
    """Record one admin change; quota and budget changes use this too."""
    session.add(
        AdminAudit(
            team_id=team_id,
            actor_id=actor_id,
            target_kind=target_kind,
            target_id=target_id,
            action=action,
            before=None if before is None else dict(before),
            after=None if after is None else dict(after),
            created_at=utcnow(),
        )
    )


async def recent_audit(session: AsyncSession, team_id: str, limit: int = 10) -> Sequence[AuditEntry]:
    """The workspace's newest changes first."""
    rows = await session.scalars(
        select(AdminAudit)
        .where(AdminAudit.team_id == team_id)
        .order_by(AdminAudit.created_at.desc(), AdminAudit.id.desc())
        .limit(limit)
    )
    return [
        AuditEntry(
            team_id=row.team_id,
            actor_id=row.actor_id,
            target_kind=row.target_kind,
            target_id=row.target_id,
            action=row.action,
            before=row.before,
            after=row.after,
            created_at=row.created_at,
        )
        for row in rows
    ]
