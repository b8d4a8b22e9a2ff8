"""The Slack budgets shared by replicas, in SQL: one PostgreSQL statement per call a replica makes.

Each (workspace, method) row is a GCRA bucket (the "generic cell rate algorithm", a token bucket
kept as one timestamp): `tat` is when the bucket would be full again had nobody else asked. A
reservation moves `tat` on by one interval (60 / rate) under the row's lock and answers when the
caller's call may go, so replicas queue first come, first served without polling. Every time is the
database's clock (`statement_timestamp()`, seconds since the epoch): replicas never compare clocks.

These functions take a connection in AUTOCOMMIT, not a session: each is one statement that is its
own transaction, so the row lock lasts one statement and nothing else is sent (no BEGIN/COMMIT).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

_NOW = "extract(epoch FROM statement_timestamp())::float8"
_NUMBERS = re.compile(
    r":(max_rate|min_rate|burst|increase|cooldown|rewards|decrease|retry_after|live|calls)\b"
)


def _sql(statement: str) -> TextClause:
    """The statement with every numeric parameter typed: PostgreSQL cannot infer `$1 * $2`."""
    return text(_NUMBERS.sub(r"CAST(:\1 AS float8)", statement))


@dataclass(frozen=True)
class Limits:
    """A method's configured budget and how it adapts (see bot.slack.edit_budget.EditBudget)."""

    max_rate: float  # calls a minute
    min_rate: float
    burst: int
    increase: float  # per accepted call, after `cooldown` seconds without a 429
    decrease: float  # the factor a 429 cuts the rate by, once per pause
    cooldown: float


@dataclass(frozen=True)
class Slot:
    """The row after a reservation or a pause, as seconds from the statement's now."""

    wait: float  # until the (first) reserved call may go (0: at once); a pause reserves none: 0
    blocked_for: float  # until the shared 429 pause ends
    full_in: float  # until the bucket is full again (tat - now)
    rate_per_minute: float


# The rate after `:rewards` calls Slack accepted since this replica last asked: AIMD's additive
# increase, only once `cooldown` has passed since the last 429, kept within the configured bounds.
_RATE = (
    f"least(:max_rate, greatest(:min_rate, CASE WHEN {_NOW} - b.last_penalty >= :cooldown "
    "THEN b.rate_per_minute + :rewards * :increase ELSE b.rate_per_minute END))"
)

# One statement: create the row on first use, else take the next slot under the row's lock.
_RESERVE = _sql(
    f"""
    INSERT INTO slack_budgets AS b (team_id, method, tat, blocked_until, rate_per_minute, last_penalty)
    VALUES (:team, :method, {_NOW} + :calls * 60.0 / :max_rate, 0, :max_rate, 0)
    ON CONFLICT (team_id, method) DO UPDATE SET
        rate_per_minute = {_RATE},
        tat = greatest(b.tat, {_NOW}, b.blocked_until) + :calls * 60.0 / {_RATE}
    RETURNING
        greatest(
            0, b.tat - (:burst + :calls - 1) * 60.0 / b.rate_per_minute - {_NOW}, b.blocked_until - {_NOW}
        ),
        greatest(0, b.blocked_until - {_NOW}),
        b.tat - {_NOW},
        b.rate_per_minute
    """
)

# An interim call (nothing final waits in this replica) takes a slot only when one is free now, and
# leaves the row untouched otherwise: while another replica's final calls (a reply's last edit, a
# dead replica's interrupted note) queue for slots, interim calls wait, on every replica, as they do
# behind finals within one process. Answers (taken, wait, blocked_for, full_in, rate); a missing row
# answers nothing (the caller reserves, which creates it).
_TAKE_IF_FREE = _sql(
    f"""
    WITH taken AS (
        UPDATE slack_budgets AS b SET
            rate_per_minute = {_RATE},
            tat = greatest(b.tat, {_NOW}) + 60.0 / {_RATE}
        WHERE b.team_id = :team AND b.method = :method AND b.blocked_until <= {_NOW}
            AND b.tat - (:burst - 1) * 60.0 / b.rate_per_minute <= {_NOW}
        RETURNING b.tat - {_NOW} AS full_in, b.rate_per_minute
    )
    SELECT true, 0.0, 0.0, full_in, rate_per_minute FROM taken
    UNION ALL
    SELECT false,
        greatest(0.001, b.tat - (:burst - 1) * 60.0 / b.rate_per_minute - {_NOW}, b.blocked_until - {_NOW}),
        greatest(0, b.blocked_until - {_NOW}),
        b.tat - {_NOW},
        b.rate_per_minute
    FROM slack_budgets AS b
    WHERE b.team_id = :team AND b.method = :method AND NOT EXISTS (SELECT 1 FROM taken)
    """
)

# A 429: every replica pauses the method until Retry-After has passed; the rate is cut once per
# pause (the 429s of calls in flight together are one signal); one call may go when the pause ends.
_PAUSE = _sql(
    f"""
    UPDATE slack_budgets AS b SET
        rate_per_minute = CASE WHEN b.blocked_until > {_NOW} THEN b.rate_per_minute
            ELSE greatest(:min_rate, b.rate_per_minute * :decrease) END,
        last_penalty = {_NOW},
        blocked_until = greatest(b.blocked_until, {_NOW} + :retry_after),
        tat = greatest(b.tat, greatest(b.blocked_until, {_NOW} + :retry_after)
            + (:burst - 1) * 60.0 / CASE WHEN b.blocked_until > {_NOW} THEN b.rate_per_minute
                ELSE greatest(:min_rate, b.rate_per_minute * :decrease) END)
    WHERE b.team_id = :team AND b.method = :method
    RETURNING 0.0, greatest(0, b.blocked_until - {_NOW}), b.tat - {_NOW}, b.rate_per_minute
    """
)

_PAUSED_FOR = _sql(
    f"SELECT greatest(0, blocked_until - {_NOW}) FROM slack_budgets "
    "WHERE team_id = :team AND method = :method"
)

# Say this replica is alive and count those seen within `:live` seconds (this one included: the
# statement's snapshot does not see its own upsert); rows silent for an hour are removed.
_HEARTBEAT = _sql(
    f"""
    WITH beat AS (
        INSERT INTO slack_budget_replicas (replica_id, seen_at) VALUES (:replica, {_NOW})
        ON CONFLICT (replica_id) DO UPDATE SET seen_at = excluded.seen_at
    ), gone AS (
        DELETE FROM slack_budget_replicas WHERE seen_at < {_NOW} - 3600 AND replica_id <> :replica
    )
    SELECT 1 + count(*) FROM slack_budget_replicas
    WHERE seen_at > {_NOW} - :live AND replica_id <> :replica
    """
)


def _limits(limits: Limits) -> dict[str, float]:
    return {
        "max_rate": limits.max_rate,
        "min_rate": limits.min_rate,
        "burst": float(limits.burst),
        "increase": limits.increase,
        "cooldown": limits.cooldown,
    }


async def reserve(
    conn: AsyncConnection, team: str, method: str, limits: Limits, rewards: int, calls: int = 1
) -> Slot:
    """Take the next call of (team, method) for this replica, crediting `rewards` accepted calls.

    `calls` > 1 books that many consecutive slots at once, one interval apart (the lease design
    that bench/budget_cost.py measures against one call per statement)."""
    params = {"team": team, "method": method, "rewards": rewards, "calls": calls, **_limits(limits)}
    row = (await conn.execute(_RESERVE, params)).one()
    return Slot(float(row[0]), float(row[1]), float(row[2]), float(row[3]))


async def take_if_free(
    conn: AsyncConnection, team: str, method: str, limits: Limits, rewards: int
) -> tuple[bool, Slot] | None:
    """An interim call: take a slot of (team, method) only if one is free now (crediting `rewards`
    then); else (False, the wait until one may be). None: the row does not exist yet."""
    params = {"team": team, "method": method, "rewards": rewards, **_limits(limits)}
    row = (await conn.execute(_TAKE_IF_FREE, params)).one_or_none()
    if row is None:
        return None
    return bool(row[0]), Slot(float(row[1]), float(row[2]), float(row[3]), float(row[4]))


async def pause(
    conn: AsyncConnection, team: str, method: str, limits: Limits, retry_after: float
) -> Slot | None:
    """Slack answered 429 with `retry_after`: pause (team, method) for every replica."""
    params = {
        "team": team,
        "method": method,
        "retry_after": retry_after,
        "min_rate": limits.min_rate,
        "decrease": limits.decrease,
        "burst": float(limits.burst),
    }
    row = (await conn.execute(_PAUSE, params)).one_or_none()
    return None if row is None else Slot(0.0, float(row[1]), float(row[2]), float(row[3]))


async def paused_for(conn: AsyncConnection, team: str, method: str) -> float:
    """Seconds until the shared pause of (team, method) ends (0: none)."""
    value = (await conn.execute(_PAUSED_FOR, {"team": team, "method": method})).scalar_one_or_none()
    return 0.0 if value is None else float(value)


async def heartbeat(conn: AsyncConnection, replica: str, live: float) -> int:
    """Record that `replica` is alive; the number of replicas alive within `live` seconds."""
    return int((await conn.execute(_HEARTBEAT, {"replica": replica, "live": live})).scalar_one())
