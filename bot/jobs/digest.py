"""Posting the daily usage digest once per (day, channel); failures are explained and retried later."""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from typing import Protocol
from zoneinfo import ZoneInfo

from aiohttp import ClientError
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.slack.digest_blocks import TERMINAL_ID, digest_message
from bot.slack.people import UserDirectory
from bot.slack.retries import with_rate_limit_retries
from bot.storage import digest_runs
from bot.storage.db import UNAVAILABLE
from bot.storage.digest_runs import Claim
from bot.usage.budgets import budget_report
from bot.usage.chart import CHART_ALT, CHART_TITLE, chart_png
from bot.usage.limits import DefaultLimits, Scope
from bot.usage.report import DigestReport, build_report

log = logging.getLogger(__name__)

BALANCE_TIMEOUT = 10.0
# A run posts the digest of each of the last CATCH_UP_DAYS days still missing (downtime, failed
# posts); older days are given up on, so a long outage does not flood the channel.
CATCH_UP_DAYS = 7
_RETRY_NOTE = "The digest was not posted; the next run retries it."


class BalanceSource(Protocol):
    """Where the account balance comes from (the AI/ML API client); USD, or None when unknown."""

    async def fetch_balance(self) -> float | None: ...


class DigestStatus(enum.StrEnum):
    POSTED = "posted"
    ALREADY_POSTED = "already_posted"
    IN_PROGRESS = "in_progress"  # another replica holds the claim right now
    FAILED = "failed"
    DRY_RUN = "dry_run"


@dataclass(frozen=True)
class DigestOutcome:
    status: DigestStatus
    day: date
    channel: str
    report: DigestReport | None = None
    slack_ts: str | None = None
    problem: str | None = None  # for FAILED: what went wrong and how to fix it


def local_today(tz: ZoneInfo, now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(tz).date()


def explain_slack_error(error: SlackApiError, channel: str) -> str:
    """An operator-facing sentence for a chat.postMessage failure: what it means and what to change."""
    data = error.response.data if isinstance(error.response.data, dict) else {}
    code = str(data.get("error") or f"HTTP {error.response.status_code}")
    if code == "channel_not_found":
        return (
            f"channel_not_found: USAGE_DIGEST_CHANNEL={channel} is not a channel the bot can see. Use the "
            "channel ID (C..., shown in the channel's About tab), not its name; for a private channel, "
            "invite the bot first."
        )
    if code == "not_in_channel":
        return (
            f"not_in_channel: the bot is not a member of {channel}. Invite it (/invite @your-bot) or add "
            "the chat:write.public scope and reinstall the app."
        )
    if code == "is_archived":
        return (
            f"is_archived: {channel} is archived. Unarchive it or set USAGE_DIGEST_CHANNEL to another "
            "channel."
        )
    if code in {"invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive"}:
        return (
            f"{code}: Slack rejected SLACK_BOT_TOKEN. Reinstall the app to the workspace and set "
            "SLACK_BOT_TOKEN to its current xoxb- token."
        )
    if code == "missing_scope":
        needed = data.get("needed") or "chat:write"
        return (
            f"missing_scope: the bot token lacks the {needed} scope. Add it under OAuth & Permissions, "
            "reinstall the app and update SLACK_BOT_TOKEN."
        )
    if code == "ratelimited" or error.response.status_code == 429:
        retry_after = error.response.headers.get("Retry-After", "?")
        return (
            f"ratelimited: Slack asked to wait {retry_after}s before posting again. Usually transient; if it "
            "keeps happening, something else is posting a lot with this token."
        )
    if code.startswith("restricted_action") or code in {"ekm_access_denied", "team_access_not_granted"}:
        return f"{code}: workspace settings do not let the bot post in {channel}; ask a Slack admin."
    if code in {"invalid_blocks", "invalid_blocks_format", "msg_too_long", "too_many_attachments"}:
        return f"{code}: Slack rejected the digest's layout. This is a bug in the bot; please report it."
    return f"{code}: Slack refused chat.postMessage (see the method's error list in Slack's API docs)."


async def _fetch_balance(source: BalanceSource) -> float | None:
    try:
        async with asyncio.timeout(BALANCE_TIMEOUT):
            return await source.fetch_balance()
    except Exception as exc:  # the balance is an extra: any failure just means "unavailable"
        log.warning("account balance unavailable for the usage digest: %s", type(exc).__name__)
        return None


async def _with_balance(report: DigestReport, source: BalanceSource | None) -> DigestReport:
    if source is None:
        return report
    return replace(report, balance_checked=True, balance_usd=await _fetch_balance(source))


async def _release(sessions: async_sessionmaker[AsyncSession], day: date, channel: str) -> None:
    try:
        async with sessions() as session:
            await digest_runs.release(session, day, channel)
            await session.commit()
    except UNAVAILABLE as exc:
        # The claim goes stale on its own after digest_runs.STALE_AFTER, so a retry still happens.
        log.warning("could not release the digest claim: %s", type(exc).__name__)


async def run_digest(
    *,
    day: date,
    channel: str,
    sessions: async_sessionmaker[AsyncSession],
    client: AsyncWebClient,
    tz: ZoneInfo,
    balance: BalanceSource | None,
    dry_run: bool = False,
    people: UserDirectory | None = None,
    limits: DefaultLimits | None = None,
) -> DigestOutcome:
    """Build the digest for local `day` and post it to `channel` unless it was already posted.

    Top users are shown by display name, looked up through `people` (a directory of its own when
    none is given). With `limits`, the digest shows each budget's use and who is over 80 %, and a
    chart of the last 14 days follows in its thread (a failed upload leaves the digest as it is).

    Never raises (it runs inside the scheduler): every failure is logged with its fix and returned.
    """
    where = {"digest_day": day.isoformat(), "channel_id": channel}
    if dry_run:
        return await _dry_run(day=day, channel=channel, sessions=sessions, tz=tz, balance=balance)
    try:
        async with sessions() as session:
            claim = await digest_runs.claim(session, day, channel)
            await session.commit()
    except UNAVAILABLE as exc:
        problem = (
            f"database error ({type(exc).__name__}): check DATABASE_URL, that the database is up, and that "
            "it is migrated (python -m bot migrate)."
        )
        log.error("usage digest for %s not posted: %s %s", day, problem, _RETRY_NOTE, extra=where)
        return DigestOutcome(DigestStatus.FAILED, day, channel, problem=problem)
    if claim is Claim.POSTED:
        log.info("usage digest for %s was already posted", day, extra=where)
        return DigestOutcome(DigestStatus.ALREADY_POSTED, day, channel)
    if claim is Claim.IN_PROGRESS:
        log.info("usage digest for %s is being posted by another process", day, extra=where)
        return DigestOutcome(DigestStatus.IN_PROGRESS, day, channel)

    try:
        async with sessions() as session:
            report = await build_report(session, day, tz)
            if limits is not None:
                report = replace(report, budgets=await budget_report(session, day, tz, limits))
        report = await _with_balance(report, balance)
        directory = people if people is not None else UserDirectory(client)
        names = await directory.names(_named_users(report))
        message = digest_message(report, names)
        response = await with_rate_limit_retries(client).chat_postMessage(
            channel=channel, text=message.text, blocks=message.blocks, unfurl_links=False, unfurl_media=False
        )
        slack_ts = str(response["ts"])
    except SlackApiError as exc:
        problem = explain_slack_error(exc, channel)
    except (SlackClientError, ClientError, TimeoutError, OSError) as exc:
        problem = f"could not reach Slack ({type(exc).__name__}); check SLACK_API_URL and the network."
    except SQLAlchemyError as exc:
        problem = f"database error while building the report ({type(exc).__name__})."
    except Exception as exc:  # a bug must not stop the scheduler; the traceback is logged
        log.exception("usage digest for %s failed unexpectedly", day, extra=where)
        problem = f"unexpected {type(exc).__name__}; see the traceback above."
    else:
        await _mark_posted(sessions, day, channel, slack_ts)
        log.info("usage digest for %s posted", day, extra={**where, "slack_ts": slack_ts})
        if limits is not None and not report.empty:
            await upload_chart(client, channel, slack_ts, sessions, day, tz, limits)
        return DigestOutcome(DigestStatus.POSTED, day, channel, report, slack_ts=slack_ts)

    log.error("usage digest for %s not posted to %s: %s %s", day, channel, problem, _RETRY_NOTE, extra=where)
    await _release(sessions, day, channel)
    return DigestOutcome(DigestStatus.FAILED, day, channel, problem=problem)


def _named_users(report: DigestReport) -> list[str]:
    users = [share.key for share in report.top_users]
    if report.budgets is not None:
        users += [use.key.subject_id for use in report.budgets.over if use.key.scope is Scope.USER]
    return [user for user in dict.fromkeys(users) if user != TERMINAL_ID]


async def upload_chart(
    client: AsyncWebClient,
    channel: str,
    thread_ts: str,
    sessions: async_sessionmaker[AsyncSession],
    day: date,
    tz: ZoneInfo,
    limits: DefaultLimits,
) -> bool:
    """The chart into the digest's thread; never raises (the digest text is already posted)."""
    try:
        png = await chart_png(sessions, day, tz, monthly_budget=limits.workspace_month)
        await client.files_upload_v2(
            channel=channel,
            thread_ts=thread_ts,
            file=png,
            filename=f"usage-{day.isoformat()}.png",
            title=CHART_TITLE,
            alt_txt=CHART_ALT,
        )
    except Exception as exc:  # a chart is an extra: any failure is logged and the digest stands
        log.warning("usage chart not uploaded for %s: %s", day, _reason(exc), extra={"channel_id": channel})
        return False
    return True


def _reason(exc: Exception) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error"))
    return type(exc).__name__


async def _dry_run(
    *,
    day: date,
    channel: str,
    sessions: async_sessionmaker[AsyncSession],
    tz: ZoneInfo,
    balance: BalanceSource | None,
) -> DigestOutcome:
    """The report only: no lock taken, nothing posted."""
    try:
        async with sessions() as session:
            report = await build_report(session, day, tz)
    except UNAVAILABLE as exc:
        problem = (
            f"cannot read usage ({type(exc).__name__}): check DATABASE_URL, that the database is up, and "
            "that it is migrated (python -m bot migrate)."
        )
        return DigestOutcome(DigestStatus.FAILED, day, channel, problem=problem)
    return DigestOutcome(DigestStatus.DRY_RUN, day, channel, await _with_balance(report, balance))


async def _mark_posted(sessions: async_sessionmaker[AsyncSession], day: date, channel: str, ts: str) -> None:
    try:
        async with sessions() as session:
            await digest_runs.mark_posted(session, day, channel, ts)
            await session.commit()
    except UNAVAILABLE as exc:
        # The message is in Slack; if the claim goes stale a later run may post the day a second time.
        log.error("usage digest posted (ts %s) but not recorded: %s", ts, type(exc).__name__)


@dataclass(frozen=True)
class DigestJob:
    """The scheduled unit of work, with everything it needs bound once by the composition root."""

    sessions: async_sessionmaker[AsyncSession]
    client: AsyncWebClient
    channel: str
    tz: ZoneInfo
    balance: BalanceSource | None = None
    directory: UserDirectory | None = None  # the process's users.info cache, when it has one
    limits: DefaultLimits | None = None  # set: the budget section and the chart

    @cached_property
    def people(self) -> UserDirectory:
        # One bounded cache for the life of the job: a catch-up of several days looks each name up once.
        return self.directory if self.directory is not None else UserDirectory(self.client)

    async def run(self, day: date, *, dry_run: bool = False) -> DigestOutcome:
        return await run_digest(
            day=day,
            channel=self.channel,
            sessions=self.sessions,
            client=self.client,
            tz=self.tz,
            balance=self.balance,
            dry_run=dry_run,
            people=self.people,
            limits=self.limits,
        )

    async def run_due(self, now: datetime | None = None) -> list[DigestOutcome]:
        """Yesterday's digest, after every earlier day of the last week still missing, oldest first.

        A day is missing when the digest was already on for this channel then (an earlier day is on
        record) but its post never landed: the bot was down at the run time, or the post failed.
        The first run for a channel posts yesterday only. A day that fails or that another process
        is posting ends the run, so the channel never shows a later day above an earlier one; the
        next run (or that process) carries on from there.
        """
        yesterday = local_today(self.tz, now) - timedelta(days=1)
        outcomes: list[DigestOutcome] = []
        due = await self._due_days(yesterday)
        for day in due:
            outcome = await self.run(day)
            outcomes.append(outcome)
            if outcome.status in (DigestStatus.FAILED, DigestStatus.IN_PROGRESS):
                if day != due[-1]:
                    log.info(
                        "usage digests after %s are left for the next run",
                        day,
                        extra={"channel_id": self.channel, "left": len(due) - len(outcomes)},
                    )
                break
        return outcomes

    async def catch_up(self, run_at: time, now: datetime | None = None) -> list[DigestOutcome]:
        """At start-up: when today's run time has passed, post every digest the downtime missed."""
        local_now = (now or datetime.now(UTC)).astimezone(self.tz)
        if local_now.time() < run_at:
            return []  # today's scheduled run is still ahead and will do it
        return await self.run_due(now)

    async def _due_days(self, yesterday: date) -> list[date]:
        oldest = yesterday - timedelta(days=CATCH_UP_DAYS - 1)
        try:
            async with self.sessions() as session:
                first = await digest_runs.first_day(session, self.channel)
                posted = await digest_runs.posted_days(session, self.channel, since=oldest)
        except UNAVAILABLE as exc:
            log.warning("could not look up missed digests: %s", type(exc).__name__)
            return [yesterday]
        if first is None:
            return [yesterday]  # the digest was never on for this channel: nothing was missed
        start = max(first, oldest)
        missing = [
            start + timedelta(days=n)
            for n in range((yesterday - start).days)
            if start + timedelta(days=n) not in posted
        ]
        return [*missing, yesterday]
