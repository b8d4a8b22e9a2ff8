"""Block Kit for the App Home tab: the person's usage and allowances; for admins the workspace."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from slack_sdk.models.blocks import (
    Block,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    ImageBlock,
    MarkdownTextObject,
    SectionBlock,
)
from slack_sdk.models.views import View

from bot.conversation.channel_settings import ChannelSettings
from bot.slack.digest_blocks import TERMINAL_ID, TERMINAL_LABEL
from bot.usage.home import Allowance, OpenAlert, WorkspaceMonth
from bot.usage.personal import PersonalUsage, PersonalWindow
from bot.usage.queries import UsageShare
from bot.usage.report import format_count, format_credits

SECTION_LINES = 10  # one section stays far below Slack's 3,000 characters
HOME_CALLBACK_ID = "glm_home"


@dataclass(frozen=True)
class AdminPage:
    """What only admins see."""

    month: WorkspaceMonth
    budget: Sequence[Allowance] | None  # None: no quotas module wired
    alerts: Sequence[OpenAlert] | None  # None: no alerts module wired
    channels: Sequence[tuple[str, ChannelSettings]]  # channels with their own settings
    chart: ChartImage | None = None  # the usage chart the app uploaded; None: text only


@dataclass(frozen=True)
class ChartImage:
    file_id: str  # a file the app uploaded (bot.slack.home_chart)
    title: str
    alt_text: str


@dataclass(frozen=True)
class HomePage:
    usage: PersonalUsage
    allowances: Sequence[Allowance] | None  # None: no quotas module wired
    admin: AdminPage | None  # None: not an admin


def home_view(page: HomePage) -> View:
    blocks: list[Block] = [HeaderBlock(text="Your GLM-5 usage"), *_personal(page.usage)]
    if page.allowances is not None:
        blocks += _allowances("Your allowance", page.allowances, "No limits apply to you.")
    if page.admin is not None:
        blocks += _admin(page.admin)
    blocks.append(
        _context("Use `/usage` for the same numbers in any channel, `/glm help` for the admin commands.")
    )
    return View(type="home", callback_id=HOME_CALLBACK_ID, blocks=blocks[:100])


def _section(text: str) -> SectionBlock:
    return SectionBlock(text=MarkdownTextObject(text=text[:3000]))


def _context(text: str) -> ContextBlock:
    return ContextBlock(elements=[MarkdownTextObject(text=text)])


def _window(window: PersonalWindow) -> MarkdownTextObject:
    requests = f"{format_count(window.requests)} request{'s' if window.requests != 1 else ''}"
    return MarkdownTextObject(text=f"*{window.label}*\n{requests}\n{format_credits(window.credits)}")


def _personal(usage: PersonalUsage) -> list[Block]:
    if usage.empty:
        return [_section("You have not used the bot this month.")]
    today, month = usage.windows[0], usage.windows[-1]
    return [
        SectionBlock(fields=[_window(today), _window(month)]),
        _context(f"Days are counted in {usage.zone}. $1 = 2,000,000 credits."),
    ]


def _allowance_line(allowance: Allowance) -> str:
    line = (
        f"*{allowance.label}*: {format_count(allowance.remaining)} of {format_count(allowance.limit)} "
        f"credits left ({allowance.share:.0%} used)"
    )
    return f"{line}, resets {allowance.resets}" if allowance.resets else line


def _allowances(title: str, allowances: Sequence[Allowance], none: str) -> list[Block]:
    lines = [_allowance_line(a) for a in allowances[:SECTION_LINES]] or [none]
    return [_section(f"*{title}*\n" + "\n".join(lines))]


def _share_line(share: UsageShare, ref: str) -> str:
    return f"{ref}: {format_credits(share.credits)}, {format_count(share.requests)} requests"


def _channel_ref(channel_id: str) -> str:
    return TERMINAL_LABEL if channel_id == TERMINAL_ID else f"<#{channel_id}>"


def _user_ref(user_id: str) -> str:
    return TERMINAL_LABEL if user_id == TERMINAL_ID else f"<@{user_id}>"


def _admin(page: AdminPage) -> list[Block]:
    month = page.month
    blocks: list[Block] = [
        DividerBlock(),
        HeaderBlock(text="Workspace (admins)"),
        _section(
            f"*This month* (since {month.first_day.day} {month.first_day:%B}): "
            f"{format_credits(month.totals.credits)}, {format_count(month.totals.requests)} requests"
            + (f", {month.totals.unknown_cost} of unknown cost" if month.totals.unknown_cost else "")
        ),
    ]
    if page.budget is not None:
        blocks += _allowances("Budget", page.budget, "No workspace budget is set.")
    if page.chart is not None:
        chart = page.chart
        blocks.append(
            ImageBlock(slack_file={"id": chart.file_id}, alt_text=chart.alt_text, title=chart.title)
        )
    by_channel = [_share_line(s, _channel_ref(s.key)) for s in month.by_channel[:SECTION_LINES]]
    by_person = [_share_line(s, _user_ref(s.key)) for s in month.by_person[:SECTION_LINES]]
    blocks.append(_section("*Spend by channel this month*\n" + ("\n".join(by_channel) or "Nothing yet.")))
    blocks.append(_section("*Spend by person this month*\n" + ("\n".join(by_person) or "Nothing yet.")))
    if page.alerts is not None:
        alerts = [f"• {a.text} ({a.raised_at:%Y-%m-%d %H:%M} UTC)" for a in page.alerts[:SECTION_LINES]]
        blocks.append(_section("*Open alerts*\n" + ("\n".join(alerts) or "None.")))
    configured = [f"• <#{channel}>: {describe_settings(s)}" for channel, s in page.channels[:SECTION_LINES]]
    blocks.append(
        _section(
            "*Channels with their own settings*\n"
            + ("\n".join(configured) or "None: every channel uses the defaults.")
        )
    )
    return blocks


def describe_settings(settings: ChannelSettings) -> str:
    """One line: mode, model, limit, prompt, follow-ups, tools (what differs from the defaults)."""
    parts = [f"mode {settings.mode.value}"]
    if settings.model:
        parts.append(f"model `{settings.model}`")
    if settings.max_output_tokens:
        parts.append(f"answers up to {format_count(settings.max_output_tokens)} tokens")
    if settings.system_prompt:
        parts.append(
            "own instructions (replacing the bot's)" if settings.replace_prompt else "own instructions"
        )
    if not settings.followups:
        parts.append("no follow-ups")
    if settings.tools is not None:
        parts.append(
            "tools " + ", ".join(f"`{name}`" for name in sorted(settings.tools))
            if settings.tools
            else "no tools"
        )
    return ", ".join(parts)
