"""How each reply streams into Slack (`SLACK_STREAMING`): natively, by edits, or chosen per reply.

Spend the scarce budget last. Once the thread's status line shows that the bot is working, the
answer's first text can appear either as the start of a native stream (chat.startStream: Tier 2 per
workspace, and every stream also needs a Tier 2 chat.stopStream) or as a new message
(chat.postMessage: limited per channel, not per workspace) that later text edits (chat.update, Tier
3 per workspace). `choose_way` picks, from the budgets' state, the way that shows text soonest; a
stream Slack refuses to start falls back to the new message, with nothing shown yet, so no text is
lost or shown twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from slack_sdk.web.async_client import AsyncWebClient

from bot.conversation.ports import ReplyPart, ReplySummary, ToolStep
from bot.slack.edit_budget import (
    APPEND_STREAM,
    SET_STATUS,
    START_STREAM,
    STOP_STREAM,
    UPDATE,
    EditBudgets,
)
from bot.slack.native_reply import NativeReply, OpenStreams, Recipient, StreamBudgets, StreamRefused
from bot.slack.renderer import RendererMetrics, SlackDeliveryError, SlackReply
from bot.slack.status import ThinkingStatus, tools_status

log = logging.getLogger(__name__)

StreamingMode = Literal["auto", "native", "edits"]

# Seconds the first text may wait for a chat.startStream in auto: a new message shows it now, so a
# start that needs longer is not worth the wait (measured: waiting up to 1 s made every other turn
# of a busy thread 0.8 s slower to show text, bench (e)).
START_BOUND = 0.2
STOP_BOUND = 20.0  # seconds within which every open stream, and this one, could be stopped
# Seconds a reply whose status was skipped waits for its first text before posting a placeholder:
# within the 1 s for showing activity.
PLACEHOLDER_GRACE = 0.5


class Way(enum.Enum):
    NATIVE = "native"  # the first text starts a native stream
    MESSAGE = "message"  # the first text is a new message, later text edits it


@dataclass(frozen=True)
class BudgetState:
    """What the chooser needs of a workspace's budgets, in seconds a call asked now would wait."""

    start_wait: float  # for a chat.startStream
    stop_wait: float  # for the chat.stopStream this stream would need, behind those of open streams


def choose_way(
    mode: StreamingMode,
    state: BudgetState,
    *,
    start_bound: float = START_BOUND,
    stop_bound: float = STOP_BOUND,
) -> Way:
    """Native where the stream's start has room soon and its stop could be made promptly; else a
    new message, whose budget is the channel's own."""
    if mode == "native":
        return Way.NATIVE
    if mode == "edits":
        return Way.MESSAGE
    if state.start_wait <= start_bound and state.stop_wait <= stop_bound:
        return Way.NATIVE
    return Way.MESSAGE


@dataclass(frozen=True)
class StreamingConfig:
    mode: StreamingMode
    interval: float  # seconds between two calls that show more text of one message
    message_chars: int  # answer characters per natively streamed message


@dataclass(frozen=True)
class ReplyPlace:
    """Where a reply goes and whom it answers."""

    team: str
    channel: str
    thread_ts: str
    user: str
    in_channel: bool  # not a DM: a native stream needs its recipient
    stop_value: str | None = None  # what the Stop button of an edit-streamed reply names (the question)
    placeholder: str | None = None  # one already showing the reply (an adopted turn's): answered in


class Streaming:
    """Builds each reply's sink; one per process (the budgets and open streams are shared)."""

    def __init__(
        self, budgets: EditBudgets, config: StreamingConfig, metrics: RendererMetrics | None = None
    ) -> None:
        self._budgets, self._config, self._metrics = budgets, config, metrics
        self.open_streams = OpenStreams()

    def reply(self, client: AsyncWebClient, place: ReplyPlace) -> ChosenReply:
        return ChosenReply(self, client, place)

    def budget_state(self, team: str) -> BudgetState:
        budgets = self._budgets
        return BudgetState(
            budgets.for_team(team, START_STREAM).expected_wait(),
            budgets.for_team(team, STOP_STREAM).expected_wait(self.open_streams.count(team)),
        )

    def _edits(self, client: AsyncWebClient, place: ReplyPlace) -> SlackReply:
        budget = self._budgets.for_team(place.team, UPDATE)
        interval = self._config.interval
        return SlackReply(
            client,
            budget,
            place.channel,
            place.thread_ts,
            interval=interval,
            metrics=self._metrics,
            stop_value=place.stop_value,
        )

    def _native(self, client: AsyncWebClient, place: ReplyPlace) -> NativeReply:
        team, budgets = place.team, self._budgets
        return NativeReply(
            client,
            StreamBudgets(
                budgets.for_team(team, START_STREAM),
                budgets.for_team(team, APPEND_STREAM),
                budgets.for_team(team, STOP_STREAM),
                budgets.for_team(team, UPDATE),
            ),
            place.channel,
            place.thread_ts,
            team=team,
            recipient=Recipient(place.user, team) if place.in_channel else None,
            interval=self._config.interval,
            limit=self._config.message_chars,
            open_streams=self.open_streams,
            metrics=self._metrics,
        )

    def _status(self, client: AsyncWebClient, place: ReplyPlace) -> ThinkingStatus:
        budget = self._budgets.for_team(place.team, SET_STATUS)
        return ThinkingStatus(client, budget, place.channel, place.thread_ts, metrics=self._metrics)


class ChosenReply:
    """One reply, streamed the way chosen at its first text; implements the conversation's `ReplySink`.

    `start()` shows the thinking status (native and auto), or posts the placeholder (edits, or when
    the status could not be shown, so people always see activity). An adopted turn's reply takes over
    the placeholder its first replica posted, and streams by edits into it whatever the mode.
    """

    def __init__(self, streaming: Streaming, client: AsyncWebClient, place: ReplyPlace) -> None:
        self._streaming, self._client, self._place = streaming, client, place
        self._mode = streaming._config.mode
        self._status = streaming._status(client, place)
        self._inner: SlackReply | NativeReply | None = None
        self._announcing: asyncio.Task[None] | None = None
        self._began = False  # the answer's first text is on its way: no placeholder any more
        self._text = asyncio.Event()  # set with `_began` by the first text
        self._steps: Sequence[ToolStep] = ()  # tool progress before any text: shown once a sink is
        self.way: Way | None = None  # how the answer's text is shown, once it is

    @property
    def refs(self) -> Sequence[str]:
        return () if self._inner is None else self._inner.refs

    @property
    def parts(self) -> Sequence[ReplyPart]:
        return () if self._inner is None else self._inner.parts

    async def start(self) -> None:
        """Show that the bot is working; raises SlackDeliveryError when the placeholder (edits) failed.

        The status goes up beside the answer, not before it: the model is asked at once, and the
        placeholder follows only if the status could not be shown and no text came first.
        """
        if self._mode == "edits" or self._place.placeholder is not None:
            await self._placeholder()
            return
        name = f"slack-reply-status-{self._place.channel}:{self._place.thread_ts}"
        self._announcing = asyncio.create_task(self._announce(), name=name)

    async def _announce(self) -> None:
        if await self._status.show() or self._began:
            return
        # No status (its budget spent): a placeholder now would need a scarce edit to show the first
        # text, while text arriving within a moment goes out as the message itself (bench (c): 118
        # of 200 statuses skipped, first text p50 4.7 -> 6.6 s through placeholders).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._text.wait(), PLACEHOLDER_GRACE)
        if self._text.is_set():
            return
        try:
            await self._placeholder()
        except SlackDeliveryError:
            log.warning("could not show the status or a placeholder; the answer will still be posted")

    async def _placeholder(self) -> None:
        self._began = True
        edits = self._inner = self._streaming._edits(self._client, self._place)
        self.way = Way.MESSAGE
        if self._steps:  # tools began while the status was being tried: the placeholder shows them
            await edits.tool_progress(self._steps)
        await edits.start(self._place.placeholder)

    async def thinking(self) -> None:
        if self._inner is None:
            await self._status.keep()

    async def tool_progress(self, steps: Sequence[ToolStep]) -> None:
        """Tools at work: shown by the sink once there is one; before that (the model called a tool
        before writing) the status names the tools that run, and the sink shows them from its start."""
        self._steps = tuple(steps)
        if self._inner is not None:
            await self._inner.tool_progress(steps)
        else:
            self._status.say(tools_status(steps))
            await self._status.keep()

    async def append(self, text: str) -> None:
        if self._inner is not None:
            await self._inner.append(text)
            return
        if not text:
            return
        self._began = True
        self._text.set()
        self._status.cleared_by_post()  # the first text posts in the thread, which clears it
        if choose_way(self._mode, self._streaming.budget_state(self._place.team)) is Way.NATIVE:
            native = self._streaming._native(self._client, self._place)
            try:
                await native.open(text, patient=self._mode == "native")
            except StreamRefused as exc:
                log.info("native stream refused, streaming by edits instead (%s)", exc.__cause__ or exc)
            else:
                self._inner, self.way = native, Way.NATIVE
                if self._steps:
                    await native.tool_progress(self._steps)
                return
        edits = self._inner = self._streaming._edits(self._client, self._place)
        self.way = Way.MESSAGE
        if self._steps:
            await edits.tool_progress(self._steps)
        await edits.append(text)
        await edits.start()  # posts the text appended so far as the first message

    async def release(self) -> None:
        """Let go of the placeholder without a last edit: another replica answers in it now."""
        await self._announced()
        if isinstance(self._inner, SlackReply):
            self._inner.release()

    async def finish(self, summary: ReplySummary) -> None:
        await self._announced()
        await self._sink().finish(summary)

    async def fail(self, note: str) -> None:
        """End with what was appended plus `note`, and take the status down; never raises."""
        await self._announced()
        await self._status.clear()
        await self._sink().fail(note)

    async def _announced(self) -> None:
        """Let the status (or placeholder) call end first, so the final message comes after it."""
        if self._announcing is not None:
            await asyncio.wait({self._announcing})
        await self._status.settled()

    def _sink(self) -> SlackReply | NativeReply:
        if self._inner is None:  # no text at all: the final message is posted as edits post it
            self._inner = self._streaming._edits(self._client, self._place)
        return self._inner
