"""APScheduler wiring: the daily digest at USAGE_DIGEST_TIME in USAGE_DIGEST_TZ, and a start-up catch-up."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from bot.jobs.digest import DigestJob

log = logging.getLogger(__name__)

JOB_ID = "usage-digest"
CATCH_UP_JOB_ID = "usage-digest-catch-up"
# A digest that fires late (event loop busy, laptop asleep, slow start) is still worth posting.
MISFIRE_GRACE_SECONDS = 6 * 3600


def build_scheduler(job: DigestJob, *, run_at: time, tz: ZoneInfo, catch_up: bool = True) -> AsyncIOScheduler:
    """A scheduler (not started: call `.start()` inside the running loop) with the digest job.

    With `catch_up`, a one-off job runs as soon as the scheduler starts and posts yesterday's digest
    if today's run time has already passed without it (the bot was down). Both jobs are safe on any
    number of replicas: the digest_runs lock lets exactly one of them post.
    """
    scheduler = AsyncIOScheduler(timezone=tz)

    async def post_due_digests() -> None:
        try:
            await job.run_due()
        except Exception:  # run_due does not raise; this guards the scheduler against a bug
            log.exception("usage digest job failed")

    async def catch_up_missed_digest() -> None:
        try:
            await job.catch_up(run_at)
        except Exception:  # as above
            log.exception("usage digest catch-up failed")

    scheduler.add_job(
        post_due_digests,
        CronTrigger(hour=run_at.hour, minute=run_at.minute, second=run_at.second, timezone=tz),
        id=JOB_ID,
        name="usage digest",
        replace_existing=True,
        coalesce=True,
        max_instances=1,
        misfire_grace_time=MISFIRE_GRACE_SECONDS,
    )
    if catch_up:
        scheduler.add_job(
            catch_up_missed_digest,
            "date",
            run_date=datetime.now(UTC),
            id=CATCH_UP_JOB_ID,
            name="usage digest catch-up",
            replace_existing=True,
            misfire_grace_time=None,  # whenever the scheduler starts, however long after building
        )
    return scheduler
