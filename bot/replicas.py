"""What replicas sharing one PostgreSQL database coordinate through it, beyond plain rows: the order of
each thread's turns and stop presses, both woken by LISTEN/NOTIFY. SQLite runs one process: None."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.conversation.shared_order import SharedTurnOrder
from bot.slack.stop_relay import StopRelay
from bot.storage.signals import SignalHub, asyncpg_dsn, presence_name


@dataclass(frozen=True)
class Replicas:
    signals: SignalHub
    order: SharedTurnOrder
    relay: StopRelay

    async def aclose(self) -> None:
        """After the turns ended: the last places go, then the listener closes."""
        await self.relay.aclose()
        await self.order.aclose()
        await self.signals.aclose()


def replicas(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], database_url: str
) -> Replicas | None:
    """Started (listening in the background) on PostgreSQL; None on SQLite."""
    if engine.dialect.name != "postgresql":
        return None
    holder = uuid.uuid4().hex  # this replica: its places, and its listener's name
    signals = SignalHub(asyncpg_dsn(database_url), name=presence_name(holder))
    order = SharedTurnOrder(sessions, signals, holder=holder)
    shared = Replicas(signals, order, StopRelay(sessions, signals))
    signals.start()  # after the subscriptions above
    return shared
