"""The thread's status line while an answer is on its way (`assistant.threads.setStatus`).

Shown within a second of an admitted event, so people see at once that the bot is working, kept
saying that it is thinking while the model only reasons, naming the tools that run before any text
is out, and cleared on failure. Slack clears it by itself when the app posts in the thread (the
first text of the answer) or after two minutes. It is a courtesy: a call is made only when its
budget has room at once, never waited for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from slack_sdk.web.async_client import AsyncWebClient

from bot.conversation.ports import ToolStep
from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason
from bot.slack.edit_budget import EditBudget
from bot.slack.renderer import RendererMetrics, classify_error
from bot.slack.retries import without_rate_limit_retries

log = logging.getLogger(__name__)

THINKING = "is thinking…"
LOADING_MESSAGES = (
    "Thinking…",
    "Reading the thread…",
    "Working through the question…",
    "Putting the answer together…",
)
REFRESH_SECONDS = 60.0  # Slack drops a status after two minutes: renew it while the model still thinks
STATUS_WAIT = 0.8  # seconds a status may wait for its budget (it should show within a second)
CALL_TIMEOUT = 2.0  # a status that takes longer is no longer worth waiting for
MAX_NAMED_TOOLS = 3
TOOL_NAME_CHARS = 40

Saying = tuple[str, tuple[str, ...]]  # a status and its loading messages


def tools_status(steps: Sequence[ToolStep]) -> Saying:
    """What the status says while tools work: the ones running now, or thinking once they are done
    (the model reads their results)."""
    running = list(dict.fromkeys(s.name[:TOOL_NAME_CHARS] for s in steps if s.status == "in_progress"))
    if not running:
        return THINKING, LOADING_MESSAGES
    named = ", ".join(running[:MAX_NAMED_TOOLS])
    if len(running) > MAX_NAMED_TOOLS:
        named += f" and {len(running) - MAX_NAMED_TOOLS} more"
    return f"is running {named}…", (f"Running {named}…",)


class ThinkingStatus:
    """The status line of one reply's thread."""

    def __init__(
        self,
        client: AsyncWebClient,
        budget: EditBudget,
        channel: str,
        thread_ts: str,
        *,
        metrics: RendererMetrics | None = None,
        refresh: float = REFRESH_SECONDS,
    ) -> None:
        self._client = without_rate_limit_retries(client)
        self._refresh = refresh
        self._budget, self._channel, self._thread_ts, self._metrics = budget, channel, thread_ts, metrics
        self._shown_at: float | None = None  # None: not showing (never shown, or cleared)
        self._key = f"status:{channel}:{thread_ts}:{id(self):x}"
        self._wanted = True  # False once the answer's first text is out: a late status must not stay
        self._says: Saying = (THINKING, LOADING_MESSAGES)  # what the status should say now
        self._said: Saying | None = None  # what Slack shows (the last call that landed)
        self._saying: asyncio.Task[None] | None = None  # bringing a shown status up to `_says`

    @property
    def shown(self) -> bool:
        return self._shown_at is not None

    async def show(self) -> bool:
        """Say that the bot is thinking; False when the budget had no room or Slack refused."""
        # The answer does not wait for the status (ChosenReply.start): waiting a moment for the budget
        # costs it nothing, skipping the status costs a placeholder.
        if self._budget.expected_wait() > STATUS_WAIT:
            log.info("thinking status skipped: its budget is spent")
            return False
        try:
            await asyncio.wait_for(self._budget.acquire(self._key), STATUS_WAIT)
        except TimeoutError:
            log.info("thinking status skipped: its budget did not free up in time")
            return False
        if not self._wanted or not await self._set(*self._says):
            return False
        if self._overtaken():  # the first text was posted while the status was on its way
            await self._set("", ())
            return False
        self._shown_at = time.monotonic()
        if self._said != self._says:  # a tool began while the status was on its way
            self._say_latest()
        return True

    def say(self, saying: Saying) -> None:
        """Change what a shown status says (the tools at work), in the background so the tools do
        not wait for Slack; the latest wins. Not shown (yet): `show` will say it."""
        self._says = saying
        if self._shown_at is not None:
            self._say_latest()

    def _say_latest(self) -> None:
        if self._saying is None or self._saying.done():
            self._saying = asyncio.create_task(self._bring_up_to_date(), name=f"slack-{self._key}")

    async def _bring_up_to_date(self) -> None:
        while self._up() and self._said != self._says:
            if self._budget.expected_wait() > STATUS_WAIT:
                log.info("thinking status not changed: its budget is spent")
                return
            try:
                await asyncio.wait_for(self._budget.acquire(self._key), STATUS_WAIT)
            except TimeoutError:
                return
            if not self._up() or not await self._set(*self._says):
                return
            if not self._up():  # the answer was posted, or the status cleared, while it was on its way
                await self._set("", ())
                return

    def _up(self) -> bool:
        return self._wanted and self._shown_at is not None

    async def settled(self) -> None:
        """Wait for a change of the status under way, so nothing of it lands after the reply."""
        if self._saying is not None:
            await asyncio.wait({self._saying})

    async def keep(self) -> None:
        """The model still only reasons: renew the status before Slack drops it."""
        if self._shown_at is not None and time.monotonic() - self._shown_at >= self._refresh:
            await self.show()

    def _overtaken(self) -> bool:
        return not self._wanted

    def cleared_by_post(self) -> None:
        """The app posted in the thread (the answer's first text): Slack cleared the status."""
        self._shown_at = None
        self._wanted = False

    async def clear(self) -> None:
        """Take the status down (the reply failed); a clear waits a little for its budget."""
        if self._shown_at is None:
            return
        self._shown_at = None
        try:
            await asyncio.wait_for(
                self._budget.acquire(f"clear:{self._thread_ts}:{id(self):x}"), CALL_TIMEOUT
            )
        except TimeoutError:
            return
        await self._set("", ())

    async def _set(self, status: str, loading: tuple[str, ...]) -> bool:
        started = time.monotonic()
        try:
            await asyncio.wait_for(
                self._client.assistant_threads_setStatus(
                    channel_id=self._channel,
                    thread_ts=self._thread_ts,
                    status=status,
                    loading_messages=list(loading) or None,
                ),
                CALL_TIMEOUT,
            )
        except SLACK_CALL_ERRORS as exc:
            kind, retry_after = classify_error(exc)
            self._observe(kind, started)
            if kind == "ratelimited":
                self._budget.penalize(retry_after)
            log.info("could not set the thread's status (%s)", call_error_reason(exc))
            return False
        self._observe("ok", started)
        self._said = (status, loading)
        self._budget.reward()
        self._budget.forget(self._key)
        return True

    def _observe(self, outcome: str, started: float) -> None:
        if self._metrics is not None:
            self._metrics.observe_slack_call(
                "assistant.threads.setStatus", outcome, time.monotonic() - started
            )
