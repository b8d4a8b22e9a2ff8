"""What the quota check costs a turn: SQL statements and milliseconds of the check and reservation.

Settling adds one DELETE in its own transaction right after the ledger row; not timed here.

    python -m bench.quota_check [--postgres URL] [--turns 200] [--rows 20000]

Runs the real Quotas on a migrated database with `--rows` ledger rows this month, with every
limit set (the worst case: four sums and three reservation sums), and with no limit at all.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import event

from bot.conversation.quota import Quotas, Reservation
from bot.storage.db import create_engine, session_factory
from bot.storage.migrate import upgrade_head
from bot.storage.models import UsageRecord
from bot.usage.limits import DefaultLimits, Subject

ALL_LIMITS = DefaultLimits(user_day=10**11, user_month=10**11, channel_day=10**11, workspace_month=10**11)


async def measure(url: str, turns: int, rows: int) -> None:
    await upgrade_head(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    statements = 0

    def count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    now = datetime.now(UTC)
    async with sessions.begin() as session:
        for n in range(rows):
            session.add(
                UsageRecord(
                    team_id="T1",
                    channel_id=f"C{n % 20}",
                    user_id=f"U{n % 200}",
                    model_requested="zhipu/glm-5",
                    prompt_tokens=100,
                    completion_tokens=900,
                    credits_used=9_000,
                    status="complete",
                    created_at=now - timedelta(minutes=n % (60 * 24 * 20)),
                )
            )
    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        for label, limits in (("every limit set", ALL_LIMITS), ("no limit", DefaultLimits())):
            stage = Quotas(sessions, limits, ZoneInfo("UTC"))
            subject = Subject("T1", "C1", "U1")
            await stage.reserve(subject, prompt_tokens=10, max_output_tokens=10)  # warm caches
            statements = 0
            took: list[float] = []
            for _ in range(turns):
                started = time.perf_counter()
                held = await stage.reserve(subject, prompt_tokens=1_000, max_output_tokens=8_192)
                took.append((time.perf_counter() - started) * 1000)
                assert isinstance(held, Reservation)
                await stage.settle(held)
                statements -= 1 if held.id is not None else 0  # the settle's DELETE: see above
            took.sort()
            print(
                f"{engine.dialect.name:10} {label:16} {statements / turns:.1f} statements/turn, "
                f"p50 {statistics.median(took):.2f} ms, p95 {took[int(len(took) * 0.95)]:.2f} ms "
                f"({rows} ledger rows)"
            )
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", help="a PostgreSQL URL (postgresql+asyncpg://...) to use instead")
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    if args.postgres:
        asyncio.run(measure(args.postgres, args.turns, args.rows))
        return
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(measure(f"sqlite+aiosqlite:///{Path(folder) / 'quota.db'}", args.turns, args.rows))


if __name__ == "__main__":
    main()
