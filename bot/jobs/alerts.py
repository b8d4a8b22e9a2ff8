"""Budget alerts to ADMIN_ALERT_CHANNEL: each threshold of each limit once per period, and spikes.

Insert-then-post: the unique quota_alerts row is committed before the message is sent, so of any
number of replicas (or a restart) exactly one posts. If the post fails, the row stays unposted and
its claim goes stale after bot.storage.quotas.ALERT_STALE_AFTER; the periodic sweep then takes it
over and retries, for as long as the period lasts. An alert is never lost to one failed post; the
price is a rare second copy when the post landed but recording it failed.

Checks run after a call is settled (in the background, off the reply's path), at most once per
CHECK_EVERY per subject, and every few minutes from the scheduler, which also catches what a crashed
process left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.quota import Quotas
from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason
from bot.slack.people import UserDirectory
from bot.slack.retries import with_rate_limit_retries
from bot.storage import quotas as store
from bot.storage.db import UNAVAILABLE, error_reason
from bot.usage.alerts import AlertDue, daily_spend, is_spike, names_from, spike_alert, threshold_alert
from bot.usage.limits import Period, Scope, Subject, local_today, period_bounds

log = logging.getLogger(__name__)

SWEEP_JOB_ID = "budget-alerts"
SWEEP_EVERY = timedelta(minutes=5)
# A subject's checks after its calls settle are at least this far apart: a busy person's or
# channel's replies share one check (each is two ledger sums) and an alert comes at most this late.
# Governance on vs off in bench (c) and (e) (one person asking): a check per reply cost +16 % and
# +20 % CPU per turn.
CHECK_EVERY = 15.0


class AlertJob:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        client: AsyncWebClient,
        channel: str,
        stage: Quotas,
        *,
        spike_minimum: int,
        people: UserDirectory | None = None,
        check_every: float = CHECK_EVERY,
    ) -> None:
        self._sessions = sessions
        self._client = with_rate_limit_retries(client)
        self._channel = channel
        self._stage = stage
        self._spike_minimum = spike_minimum
        self._people = people or UserDirectory(client)
        self._check_every = check_every
        self._pending: dict[Subject, asyncio.Task[None]] = {}  # one checker per subject at a time
        self._due: set[Subject] = set()  # settled since their last check started
        self._checked_at: dict[Subject, float] = {}
        self._hurry = asyncio.Event()  # idle(): the checks due run now, not after their pause
        self._idling = 0  # idle() calls under way: the last one to end lets the pauses return

    def check_soon(self, subject: Subject) -> None:
        """After a call is settled: check its subject in the background (the reply does not wait),
        now or, when it was checked less than `check_every` ago, once that has passed."""
        self._due.add(subject)
        running = self._pending.get(subject)
        if running is not None and not running.done():
            return  # its checker runs again after the check in progress (which may have read before)
        task = asyncio.create_task(self._checks(subject), name="budget-alert-check")
        self._pending[subject] = task
        task.add_done_callback(lambda ended: self._ended(subject, ended))

    async def idle(self) -> None:
        """Run the checks due without their pause, and wait for them (tests, shutdown)."""
        self._hurry.set()
        self._idling += 1
        try:
            while self._pending:
                await asyncio.wait(list(self._pending.values()))
        finally:
            self._idling -= 1
            if not self._idling:
                self._hurry.clear()

    async def _checks(self, subject: Subject) -> None:
        while subject in self._due:
            pause = self._checked_at.get(subject, -math.inf) + self._check_every - time.monotonic()
            if pause > 0 and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), pause)
            self._due.discard(subject)
            self._checked_at[subject] = time.monotonic()
            await self._guarded(subject)
        self._forget_quiet()

    def _ended(self, subject: Subject, task: asyncio.Task[None]) -> None:
        if self._pending.get(subject) is task:
            del self._pending[subject]

    def _forget_quiet(self) -> None:
        """Drop the check times that no longer defer anything (the dict holds busy subjects only)."""
        if len(self._checked_at) > 1000:
            since = time.monotonic() - self._check_every
            self._checked_at = {s: at for s, at in self._checked_at.items() if at > since}

    async def check(self, subject: Subject, now: datetime | None = None) -> int:
        """Post what `subject`'s limits and spend call for; returns how many alerts were posted."""
        now = now or datetime.now(UTC)
        today = local_today(self._stage.tz, now)
        due: list[AlertDue] = []
        names = await self._people.names([subject.user_id] if subject.user_id else [])
        name = names_from(names)
        for use in await self._stage.uses(subject, now):
            alert = threshold_alert(subject.team_id, use, today, self._stage.tz, name)
            if alert is not None:
                due.append(alert)
        if subject.user_id:
            async with self._sessions() as session:
                spend = await daily_spend(session, subject.user_id, self._stage.tz, now)
            if is_spike(spend, self._spike_minimum):
                label = name(Scope.USER, subject.user_id)
                due.append(spike_alert(subject.team_id, subject.user_id, spend, today, label))
        posted = 0
        for alert in due:
            posted += await self._deliver(alert, now)
        return posted

    async def sweep(self, now: datetime | None = None) -> int:
        """Every subject that spent in the current periods, and stale claims whose post never landed."""
        now = now or datetime.now(UTC)
        posted = await self._retry_unposted(now)
        today = local_today(self._stage.tz, now)
        day_start, day_end = period_bounds(Period.DAY, today, self._stage.tz)
        month_start, month_end = period_bounds(Period.MONTH, today, self._stage.tz)
        async with self._sessions() as session:
            users = await store.spenders(session, "user_id", month_start, month_end)
            channels = await store.spenders(session, "channel_id", day_start, day_end)
        subjects = {Subject(team, None, user) for team, user, _ in users}
        subjects |= {Subject(team, channel, None) for team, channel, _ in channels}
        subjects |= {Subject(team, None, None) for team, _, _ in users}
        for subject in sorted(subjects, key=lambda s: (s.team_id, s.channel_id or "", s.user_id or "")):
            posted += await self.check(subject, now)
        return posted

    async def _guarded(self, subject: Subject) -> int:
        try:
            return await self.check(subject)
        except UNAVAILABLE as exc:
            log.warning("budget alert check skipped: %s", error_reason(exc))
        except Exception:  # a background task: the sweep checks again later
            log.exception("budget alert check failed")
        return 0

    async def _deliver(self, alert: AlertDue, now: datetime) -> int:
        async with self._sessions.begin() as session:
            alert_id = await store.claim_alert(session, _key(alert, alert.threshold), alert.text, now)
            if alert_id is None:
                return 0  # posted before, or being posted by another process
            # Lower thresholds reached at once are folded into this message, and never sent later.
            # Their rows are marked posted now, so a failed post is retried once, as the top threshold.
            for threshold in alert.covers:
                covered = await store.claim_alert(session, _key(alert, threshold), alert.text, now)
                if covered is not None:
                    await store.mark_alert_posted(session, covered, now)
        return await self._post(alert.text, [alert_id], now)

    async def _retry_unposted(self, now: datetime) -> int:
        since = local_today(self._stage.tz, now).replace(day=1)
        async with self._sessions() as session:
            stale = await store.stale_unposted_alerts(session, now, since=since)
        posted = 0
        for key, text in stale:
            async with self._sessions.begin() as session:
                alert_id = await store.claim_alert(session, key, text, now)
            if alert_id is not None:
                posted += await self._post(text, [alert_id], now)
        return posted

    async def _post(self, text: str, alert_ids: list[int], now: datetime) -> int:
        try:
            await self._client.chat_postMessage(channel=self._channel, text=text, unfurl_links=False)
        except SLACK_CALL_ERRORS as exc:
            log.warning("budget alert not posted (%s); retried by the sweep", call_error_reason(exc))
            return 0
        async with self._sessions.begin() as session:
            for alert_id in alert_ids:
                await store.mark_alert_posted(session, alert_id, now)
        log.info("budget alert posted", extra={"channel_id": self._channel})
        return 1

    def schedule(self, scheduler: AsyncIOScheduler) -> None:
        """The periodic sweep: safe on every replica (the claim rows decide who posts)."""

        async def sweep() -> None:
            try:
                await self.sweep()
            except UNAVAILABLE as exc:
                log.warning("budget alert sweep skipped: %s", error_reason(exc))
            except Exception:  # guards the scheduler against a bug
                log.exception("budget alert sweep failed")

        scheduler.add_job(
            sweep,
            IntervalTrigger(seconds=SWEEP_EVERY.total_seconds()),
            id=SWEEP_JOB_ID,
            name="budget alerts",
            replace_existing=True,
            coalesce=True,
            max_instances=1,
        )


def _key(alert: AlertDue, threshold: int) -> store.AlertKey:
    return store.AlertKey(
        alert.team_id, alert.scope.value, alert.subject_id, alert.period.value, alert.period_start, threshold
    )
