"""Block Kit for the daily usage digest and for the `/usage` answer, each with a plain-text fallback."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bot.slack.text import mrkdwn_escape
from bot.storage.models import ConversationKind
from bot.usage.budgets import BudgetReport
from bot.usage.limits import LimitUse, Period, Scope
from bot.usage.personal import PersonalUsage, PersonalWindow, QuotaLeft
from bot.usage.queries import UsageShare
from bot.usage.report import (
    Change,
    DigestReport,
    format_change,
    format_count,
    format_credits,
    format_day,
    format_usd,
)

Block = dict[str, Any]
_OVER_SHOWN = 15  # keeps the section well under Slack's 3,000 characters
_HEADER_MAX = 150  # Slack's limit for plain_text in a header block
# `python -m bot chat` records its usage with this id as team, channel and user.
TERMINAL_ID = ConversationKind.TERMINAL.value
TERMINAL_LABEL = "Terminal chat"


@dataclass(frozen=True)
class SlackMessage:
    """What chat.postMessage or a response_url gets: `text` is the notification and fallback."""

    text: str
    blocks: list[Block]


def _mrkdwn(text: str) -> Block:
    return {"type": "mrkdwn", "text": text}


def _section(text: str) -> Block:
    return {"type": "section", "text": _mrkdwn(text)}


def _fields(*texts: str) -> Block:
    return {"type": "section", "fields": [_mrkdwn(text) for text in texts]}


def _context(text: str) -> Block:
    return {"type": "context", "elements": [_mrkdwn(text)]}


def _header(text: str) -> Block:
    return {"type": "header", "text": {"type": "plain_text", "text": text[:_HEADER_MAX], "emoji": True}}


def user_ref(user_id: str, names: Mapping[str, str]) -> str:
    """The person's name as plain text, never a `<@U…>` mention: the digest must not ping anyone.

    A `<@U…>` in a bot's mrkdwn (section or context alike) is a real mention that notifies the
    person; Slack offers no silent form of it. An id Slack could not resolve is shown bare.
    """
    if user_id == TERMINAL_ID:
        return TERMINAL_LABEL
    return mrkdwn_escape(names.get(user_id) or user_id)


def channel_ref(channel_id: str) -> str:
    if channel_id == TERMINAL_ID:
        return TERMINAL_LABEL
    # A DM's id (D...) renders as an unreadable mention; say what it is instead.
    return "a direct message" if channel_id.startswith("D") else f"<#{mrkdwn_escape(channel_id)}>"


def _ranking(title: str, shares: Iterable[UsageShare], name: Callable[[str], str]) -> str:
    lines = [
        f"{rank}. {name(share.key)} · {format_count(share.requests)} "
        f"request{'s' if share.requests != 1 else ''} · {format_credits(share.credits)}"
        for rank, share in enumerate(shares, start=1)
    ]
    return f"*{title}*\n" + ("\n".join(lines) if lines else "_none recorded_")


def _change_line(label: str, change: Change) -> str:
    return (
        f"*{label}*\nvs day before {format_change(change.vs_previous_day)} · "
        f"vs 7-day avg {format_change(change.vs_week_average)}"
    )


def balance_text(report: DigestReport) -> str | None:
    if not report.balance_checked:
        return None
    if report.balance_usd is None:
        return "AI/ML API account balance unavailable"
    return f"AI/ML API account balance: {format_usd(report.balance_usd)}"


def feedback_text(report: DigestReport) -> str:
    """`*Feedback*` field: 👍/👎 on the day's answers and the share of answers rated."""
    votes = report.feedback
    share = report.rated_share
    rated = "no answers to rate" if share is None else f"{share:.0%} of answers rated"
    return f"*Feedback*\n👍 {format_count(votes.up)} · 👎 {format_count(votes.down)} · {rated}"


def _span_note(report: DigestReport) -> str:
    note = f"{report.day.isoformat()} 00:00-24:00 {report.zone}"
    return note if report.hours == 24 else f"{note} ({report.hours} hours: clocks changed)"


def digest_message(report: DigestReport, names: Mapping[str, str] | None = None) -> SlackMessage:
    """The digest; `names` maps the top users' ids to display names (missing ones show as ids)."""
    known = names or {}
    day = format_day(report.day)
    balance = balance_text(report)
    header = _header(f"Usage digest · {day}")
    if report.empty:
        blocks = [header, _section(f"No usage on {day}.")]
        if balance:
            blocks.append(_context(balance))
        return SlackMessage(text=f"No usage on {day}.", blocks=blocks)

    t = report.totals
    tokens = t.tokens
    blocks = [
        header,
        _context(_span_note(report)),
        _fields(
            f"*Spent*\n{format_credits(t.credits)}",
            f"*Requests*\n{format_count(t.requests)} ({format_count(t.succeeded)} succeeded · "
            f"{format_count(t.failed)} failed)",
            f"*Tokens*\nprompt {format_count(tokens.prompt)} · completion {format_count(tokens.completion)}\n"
            f"cached {format_count(tokens.cached)} · reasoning {format_count(tokens.reasoning)}",
            f"*Unknown cost*\n{format_count(t.unknown_cost)} call{'s' if t.unknown_cost != 1 else ''}"
            + (" (not in the credits above)" if t.unknown_cost else ""),
            _change_line("Credits change", report.credits_change),
            _change_line("Requests change", report.requests_change),
            feedback_text(report),
        ),
        {"type": "divider"},
        _section(_ranking("Top users", report.top_users, lambda user_id: user_ref(user_id, known))),
        _section(_ranking("Top channels", report.top_channels, channel_ref)),
        _section(_ranking("Per model", report.models, lambda model: f"`{mrkdwn_escape(model)}`")),
    ]
    if report.budgets is not None and not report.budgets.empty:
        blocks.append(_section(budget_text(report.budgets, known)))
    if balance:
        blocks.append(_context(balance))
    text = (
        f"Usage digest for {day}: {format_credits(t.credits)}, {format_count(t.requests)} requests "
        f"({format_count(t.failed)} failed)."
    )
    return SlackMessage(text=text, blocks=blocks)


def _use_line(use: LimitUse, names: Mapping[str, str]) -> str:
    span = "daily" if use.key.period is Period.DAY else "monthly"
    who = {
        Scope.USER: lambda: f"{user_ref(use.key.subject_id, names)}'s {span} limit",
        Scope.CHANNEL: lambda: f"{channel_ref(use.key.subject_id)}'s {span} limit",
        Scope.WORKSPACE: lambda: f"Workspace {span} budget",
    }[use.key.scope]()
    return (
        f"{who}: {format_count(use.spent)} of {format_count(use.limit)} credits ({use.fraction * 100:.0f}%)"
    )


def budget_text(budgets: BudgetReport, names: Mapping[str, str]) -> str:
    """Each workspace budget's use to date, then every person or channel at 80 % of a limit or more."""
    lines = ["*Budgets*"]
    lines += [_use_line(use, names) for use in budgets.workspace]
    if budgets.over:
        lines.append("*Over 80 % of a limit*")
        lines += [f"• {_use_line(use, names)}" for use in budgets.over[:_OVER_SHOWN]]
        if len(budgets.over) > _OVER_SHOWN:
            lines.append(f"…and {len(budgets.over) - _OVER_SHOWN} more")
    return "\n".join(lines)


def _window_field(window: PersonalWindow) -> str:
    lines = [
        f"*{window.label}*",
        f"{format_count(window.requests)} request{'s' if window.requests != 1 else ''}",
        f"{format_count(window.tokens)} tokens ({format_count(window.prompt_tokens)} in · "
        f"{format_count(window.completion_tokens)} out)",
        format_credits(window.credits),
    ]
    if window.unknown_cost:
        lines.append(f"_{format_count(window.unknown_cost)} with unknown cost_")
    return "\n".join(lines)


def quota_line(quota: QuotaLeft) -> str:
    """e.g. "Today: 38,000 of 50,000 credits left (resets 00:00 Wed 2 Dec, Europe/Berlin)"."""
    label = "Today" if quota.period is Period.DAY else "This month"
    when = quota.resets_at
    return (
        f"{label}: {format_count(quota.remaining)} of {format_count(quota.limit)} credits left "
        f"(resets {when:%H:%M} {when:%a} {when.day} {when:%b}, {when.tzinfo})"
    )


def _quota_section(usage: PersonalUsage) -> list[Block]:
    if not usage.quotas:
        return []
    return [_section("*Your limits*\n" + "\n".join(quota_line(quota) for quota in usage.quotas))]


def personal_message(usage: PersonalUsage) -> SlackMessage:
    """The ephemeral `/usage` answer: the caller's own numbers only, and what is left of their limits."""
    limits = " ".join(f"{quota_line(quota)}." for quota in usage.quotas)
    if usage.empty:
        text = "You have no recorded usage in the last 7 days or this month."
        return SlackMessage(text=f"{text} {limits}".strip(), blocks=[_section(text), *_quota_section(usage)])
    today = usage.windows[0]
    blocks = [
        _section("*Your AI usage*"),
        _fields(*(_window_field(window) for window in usage.windows)),
        *_quota_section(usage),
        _context(f"Days are counted in {usage.zone}. $1 = 2,000,000 credits."),
    ]
    text = f"Your usage today: {format_count(today.requests)} requests, {format_credits(today.credits)}."
    return SlackMessage(text=f"{text} {limits}".strip(), blocks=blocks)
