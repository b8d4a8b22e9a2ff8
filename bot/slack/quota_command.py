"""`/glm quota` and `/glm budget` for admins: set a person's, a channel's or the workspace's limit.

The `/glm` router (bot.slack.glm_command) routes `quota` and `budget` here (`add_quota_subcommands`);
`handle_quota` / `handle_budget` take the rest of the text and the caller's facts and return the
ephemeral reply. Every change is written to the admin audit table in the transaction that stores it,
and passed to the optional `audit` hook afterwards (e.g. to refresh the App Home).

    /glm quota @person 50000/day       /glm quota #channel 100000/day     /glm budget 5000000/month
    /glm quota @person 2m/month        /glm quota @person unlimited/day   /glm quota @person default/day
    /glm quota @person                 (shows the person's limits and what is left)

Mentions arrive as `<@U123|name>` and `<#C123|name>` when the command escapes them (manifest
`should_escape: true`); bare ids (U123, C123) work either way. A plain `@name` cannot be resolved.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.person import Person
from bot.conversation.quota import Quotas
from bot.slack.glm_command import GlmCommand, GlmRequest, Subcommand
from bot.storage import quotas as store
from bot.storage.channel_settings import add_audit
from bot.usage.limits import LimitKey, Override, Period, Scope, Subject, limit_for, local_today, resets_at
from bot.usage.report import format_count

MAX_CREDITS = 10**12  # $500,000: anything larger is a typo
NOT_ADMIN = "Only bot admins (ADMIN_USER_IDS) and workspace admins can change quotas and budgets."
QUOTA_USAGE = (
    "Usage: `/glm quota @person 50000/day`, `/glm quota #channel 100000/day` (or `/month`); "
    "`unlimited/day` lifts the limit, `default/day` goes back to the setting; `/glm quota @person` shows it."
)
BUDGET_USAGE = "Usage: `/glm budget 5000000/month` (or `unlimited/month`, `default/month`)."

_USER = re.compile(r"^<@([UW][A-Z0-9]+)(?:\|[^>]*)?>$|^([UW][A-Z0-9]+)$")
_CHANNEL = re.compile(r"^<#([CGD][A-Z0-9]+)(?:\|[^>]*)?>$|^([CG][A-Z0-9]+)$")
_AMOUNT = re.compile(
    r"^(?P<value>[0-9][0-9,_]*(?:\.[0-9]+)?[km]?|unlimited|none|default)/(?P<period>day|month)$", re.I
)


@dataclass(frozen=True)
class QuotaChange:
    """One stored change, for the audit log: `before`/`after` None means no limit; `*_set` False
    means no override (the setting's default applied)."""

    team_id: str
    actor_id: str
    scope: Scope
    subject_id: str
    period: Period
    before_set: bool
    before: int | None
    after_set: bool
    after: int | None
    at: datetime


AuditHook = Callable[[QuotaChange], Awaitable[None]]


class QuotaCommandError(ValueError):
    """The text could not be understood; the message is shown to the admin as is."""


@dataclass(frozen=True)
class _Amount:
    period: Period
    credits: int | None  # None: unlimited
    reset: bool  # back to the setting's default


def parse_amount(text: str) -> _Amount:
    match = _AMOUNT.match(text.strip())
    if match is None:
        raise QuotaCommandError(f"`{text}` is not an amount: write credits per period, e.g. `50000/day`.")
    value, period = match["value"].lower(), Period(match["period"].lower())
    if value == "default":
        return _Amount(period, None, True)
    if value in ("unlimited", "none"):
        return _Amount(period, None, False)
    scale = {"k": 1_000, "m": 1_000_000}.get(value[-1], 1)
    number = float(value.rstrip("km").replace(",", "").replace("_", "")) * scale
    if number != int(number):
        raise QuotaCommandError(f"`{text}`: credits are whole numbers.")
    if number > MAX_CREDITS:
        raise QuotaCommandError(f"`{text}` is more than {format_count(MAX_CREDITS)} credits; is it a typo?")
    return _Amount(period, int(number), False)


def parse_target(word: str) -> tuple[Scope, str]:
    if (user := _USER.match(word)) is not None:
        return Scope.USER, user[1] or user[2]
    if (channel := _CHANNEL.match(word)) is not None:
        return Scope.CHANNEL, channel[1] or channel[2]
    if word.startswith(("@", "#")):
        raise QuotaCommandError(
            f"I can't tell who `{word}` is: pick the person or channel from Slack's autocomplete so the "
            "command carries their id."
        )
    raise QuotaCommandError(f"`{word}` is not a person or a channel. {QUOTA_USAGE}")


class QuotaCommands:
    """The admin commands, bound to the process's quota stage and database."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        stage: Quotas,
        *,
        audit: AuditHook | None = None,
    ) -> None:
        self._sessions = sessions
        self._stage = stage
        self.audit = audit

    async def handle_quota(self, text: str, caller: Person, *, team_id: str) -> str:
        """`/glm quota <@person|#channel> [<credits>/<day|month>]`; returns the ephemeral reply."""
        if not caller.is_admin:
            return NOT_ADMIN
        words = text.split()
        if not words or len(words) > 2:
            return QUOTA_USAGE
        try:
            scope, subject_id = parse_target(words[0])
            if len(words) == 1:
                return await self._show(team_id, scope, subject_id)
            amount = parse_amount(words[1])
        except QuotaCommandError as exc:
            return str(exc)
        return await self._set(team_id, caller, scope, subject_id, amount)

    async def handle_budget(self, text: str, caller: Person, *, team_id: str) -> str:
        """`/glm budget <credits>/<month|day>`: the workspace's budget; returns the ephemeral reply."""
        if not caller.is_admin:
            return NOT_ADMIN
        words = text.split()
        if len(words) != 1:
            return BUDGET_USAGE if not words else f"One amount, please. {BUDGET_USAGE}"
        try:
            amount = parse_amount(words[0])
        except QuotaCommandError as exc:
            return f"{exc} {BUDGET_USAGE}"
        return await self._set(team_id, caller, Scope.WORKSPACE, team_id, amount)

    async def _set(self, team_id: str, caller: Person, scope: Scope, subject_id: str, amount: _Amount) -> str:
        key = LimitKey(scope, subject_id, amount.period)
        now = datetime.now(UTC)
        async with self._sessions.begin() as session:
            if amount.reset:
                existed, before = await store.delete_override(session, team_id, key)
            else:
                override = Override(scope, subject_id, amount.period, amount.credits)
                existed, before = await store.set_override(
                    session, team_id, override, updated_by=caller.user_id
                )
            field = f"{'daily' if amount.period is Period.DAY else 'monthly'}_credits"
            await add_audit(
                session,
                team_id=team_id,
                actor_id=caller.user_id,
                target_kind=scope.value,
                target_id=subject_id,
                action="budget" if scope is Scope.WORKSPACE else "quota",
                before={field: _audited(existed, before)},
                after={field: _audited(not amount.reset, amount.credits)},
            )
        self._stage.forget_overrides(team_id)
        default = self._stage.defaults.get(scope, amount.period)
        change = QuotaChange(
            team_id,
            caller.user_id,
            scope,
            subject_id,
            amount.period,
            existed,
            before if existed else default,
            not amount.reset,
            default if amount.reset else amount.credits,
            now,
        )
        if self.audit is not None:
            await self.audit(change)
        was = _credits(change.before) + ("" if existed else " (the default)")
        now_text = _credits(change.after) + (" (the default)" if amount.reset else "")
        return f"{_upper_first(_whose(scope, subject_id, amount.period))} is now {now_text}; it was {was}."

    async def _show(self, team_id: str, scope: Scope, subject_id: str) -> str:
        channel = subject_id if scope is Scope.CHANNEL else None
        subject = Subject(team_id, channel, subject_id if scope is Scope.USER else None)
        overrides = await self._stage.overrides(team_id)
        uses = {use.key: use for use in await self._stage.uses(subject)}
        today = local_today(self._stage.tz)
        lines = []
        for period in (Period.DAY, Period.MONTH):
            key = LimitKey(scope, subject_id, period)
            limit = limit_for(key, self._stage.defaults, overrides)
            line = f"{_upper_first(_whose(scope, subject_id, period))}: {_credits(limit)}"
            use = uses.get(key)
            if use is not None:
                when = resets_at(period, today, self._stage.tz)
                line += f", {format_count(max(0, use.remaining))} left (resets {when:%H:%M %a %d %b})"
            lines.append(line)
        return "\n".join(lines)


def _audited(overridden: bool, credits: int | None) -> int | str | None:
    """The audit log's value: None is the setting's default, "unlimited" a lifted limit."""
    if not overridden:
        return None
    return "unlimited" if credits is None else credits


def add_quota_subcommands(glm: GlmCommand, commands: QuotaCommands) -> None:
    """`/glm quota ...` and `/glm budget ...` on the router, for admins."""

    async def quota(request: GlmRequest) -> str:
        return await commands.handle_quota(request.args, _caller(request), team_id=request.team_id)

    async def budget(request: GlmRequest) -> str:
        return await commands.handle_budget(request.args, _caller(request), team_id=request.team_id)

    glm.add(
        "quota", Subcommand("quota @person 50000/day", "a person's or a channel's credit limit", quota, True)
    )
    glm.add("budget", Subcommand("budget 5000000/month", "the workspace's credit budget", budget, True))


def _caller(request: GlmRequest) -> Person:
    return Person(request.user_id, request.team_id, is_admin=request.is_admin)


def _credits(value: int | None) -> str:
    return "no limit" if value is None else f"{format_count(value)} credits"


def _whose(scope: Scope, subject_id: str, period: Period) -> str:
    span = "daily" if period is Period.DAY else "monthly"
    if scope is Scope.WORKSPACE:
        return f"the workspace's {span} budget"
    who = f"<@{subject_id}>" if scope is Scope.USER else f"<#{subject_id}>"
    return f"{who}'s {span} limit"


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]
