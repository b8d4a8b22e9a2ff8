"""`python -m bot digest [--date YYYY-MM-DD] [--dry-run]`: build one day's usage digest now."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import date, timedelta

from slack_sdk.web.async_client import AsyncWebClient

from bot.jobs.digest import BalanceSource, DigestStatus, local_today, run_digest
from bot.llm.client import AimlClient
from bot.settings import Settings
from bot.storage.db import create_engine, session_factory
from bot.usage.queries import UsageShare
from bot.usage.report import (
    DigestReport,
    format_change,
    format_count,
    format_credits,
    format_day,
    format_usd,
)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _rows(title: str, shares: Iterable[UsageShare]) -> list[str]:
    shares = list(shares)
    if not shares:
        return [f"{title}: none"]
    width = max(len(share.key) for share in shares)
    lines = [f"{title}:"]
    for rank, share in enumerate(shares, start=1):
        lines.append(
            f"  {rank}. {share.key:<{width}}  {format_count(share.requests):>7} req  "
            f"{format_count(share.tokens):>11} tok  {format_credits(share.credits)}"
        )
    return lines


def render_table(report: DigestReport) -> str:
    """The digest as plain text for a terminal, with the same figures as the Slack message."""
    title = f"Usage digest · {format_day(report.day)} ({report.zone}, {report.hours} h)"
    lines = [title, "=" * len(title)]
    if report.empty:
        lines.append(f"No usage on {format_day(report.day)}.")
    else:
        t, tokens = report.totals, report.totals.tokens
        pairs = [
            ("Spent", format_credits(t.credits)),
            ("Requests", f"{format_count(t.requests)} ({format_count(t.succeeded)} succeeded, "
             f"{format_count(t.failed)} failed)"),
            ("Tokens", f"prompt {format_count(tokens.prompt)}, completion {format_count(tokens.completion)}, "
             f"cached {format_count(tokens.cached)}, reasoning {format_count(tokens.reasoning)}"),
            ("Unknown cost", f"{format_count(t.unknown_cost)} calls (not in the credits above)"),
            ("Credits change", f"vs day before {format_change(report.credits_change.vs_previous_day)}, "
             f"vs 7-day avg {format_change(report.credits_change.vs_week_average)}"),
            ("Requests change", f"vs day before {format_change(report.requests_change.vs_previous_day)}, "
             f"vs 7-day avg {format_change(report.requests_change.vs_week_average)}"),
            ("Feedback", f"up {format_count(report.feedback.up)}, down {format_count(report.feedback.down)}, "
             + ("no answers to rate" if report.rated_share is None
                else f"{report.rated_share:.0%} of answers rated")),
        ]  # fmt: skip
        width = max(len(label) for label, _ in pairs)
        lines += [f"{label:<{width}}  {value}" for label, value in pairs]
        lines += ["", *_rows("Top users", report.top_users), *_rows("Top channels", report.top_channels)]
        lines += _rows("Per model", report.models)
    if report.balance_checked:
        balance = "unavailable" if report.balance_usd is None else format_usd(report.balance_usd)
        lines += ["", f"Account balance: {balance}"]
    return "\n".join(lines)


@asynccontextmanager
async def _balance_source(settings: Settings) -> AsyncIterator[BalanceSource | None]:
    if settings.aimlapi_key is None or not settings.aimlapi_key.get_secret_value():
        yield None
        return
    async with AimlClient(
        api_key=settings.aimlapi_key.get_secret_value(),
        base_url=settings.aimlapi_base_url,
        model=settings.aimlapi_model,
        connect_timeout=settings.llm_connect_timeout,
        max_retries=1,
    ) as client:
        yield client


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


async def digest_command(settings: Settings, day: date | None, dry_run: bool) -> int:
    """Print (dry run) or post the digest for `day` (default: yesterday in USAGE_DIGEST_TZ)."""
    tz = settings.digest_zone
    day = day or local_today(tz) - timedelta(days=1)
    channel = settings.usage_digest_channel or ""
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else ""
    if not dry_run and not token:
        _error("SLACK_BOT_TOKEN is required to post the digest (or use --dry-run to print it)")
        return EXIT_CONFIG
    if not dry_run and not channel:
        _error("USAGE_DIGEST_CHANNEL is required to post the digest (or use --dry-run to print it)")
        return EXIT_CONFIG

    engine = create_engine(settings.database_url)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(engine.dispose)
        balance = await stack.enter_async_context(_balance_source(settings))
        client = AsyncWebClient(token=token or None, base_url=settings.slack_api_url)
        outcome = await run_digest(
            day=day,
            channel=channel,
            sessions=session_factory(engine),
            client=client,
            tz=tz,
            balance=balance,
            dry_run=dry_run,
        )

    if outcome.status is DigestStatus.DRY_RUN and outcome.report is not None:
        print(render_table(outcome.report))
        return EXIT_OK
    if outcome.status is DigestStatus.POSTED:
        print(f"posted the digest for {day} to {channel} (ts {outcome.slack_ts})")
        return EXIT_OK
    if outcome.status is DigestStatus.ALREADY_POSTED:
        print(f"the digest for {day} was already posted to {channel}; nothing to do")
        return EXIT_OK
    if outcome.status is DigestStatus.IN_PROGRESS:
        print(f"another process is posting the digest for {day} right now; nothing to do")
        return EXIT_OK
    _error(f"the digest for {day} was {'not built' if dry_run else 'not posted'}: {outcome.problem}")
    return EXIT_FAILED
