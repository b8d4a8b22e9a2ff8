"""The quota stage as the admission pipeline and a turn see it (bot.conversation.admission.QuotaStage,
Reservation, EarlyHold) over `Quotas`: what a turn's first call is estimated to cost, the hold taken
with the claim far from every limit, and one turn's hold until the turn ends."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from bot.conversation.admission import Arrival, Candidate, Refused
from bot.conversation.budget import TokenEstimator
from bot.conversation.channel_settings import ChannelSettings
from bot.conversation.keys import ConversationKind
from bot.conversation.quota import FarHold, QuotaRefused, Quotas, Reservation
from bot.llm.types import ChatMessage
from bot.storage.db import UNAVAILABLE, error_reason
from bot.usage.limits import Subject

if TYPE_CHECKING:
    from bot.conversation.service import TurnOutcome

log = logging.getLogger(__name__)


class QuotaGate:
    """The admission pipeline's quota stage (bot.conversation.admission.QuotaStage) over `Quotas`.

    Admission runs before the thread's history is read, so the estimate is the new message plus
    the workspace's recent average prompt, plus the channel's (or the default) maximum output.
    A DM counts against the person's limits only: a channel limit is for shared channels.
    """

    def __init__(
        self, quotas: Quotas, *, max_output_tokens: int, estimator: TokenEstimator | None = None
    ) -> None:
        self.quotas = quotas
        self._max_output = max_output_tokens
        self._estimator = estimator or TokenEstimator()

    async def plan(self, arrival: Arrival, channel: ChannelSettings) -> EarlyCredits | None:
        subject, prompt, output = self._call(arrival, channel)
        plan = await self.quotas.plan_far(subject, prompt_tokens=prompt, max_output_tokens=output)
        return None if plan is None else EarlyCredits(self.quotas, plan)

    async def reserve(self, candidate: Candidate, *, near: bool = False) -> HeldCredits | Refused:
        subject, prompt, output = self._call(candidate.arrival, candidate.channel)
        held = await self.quotas.reserve(
            subject,
            prompt_tokens=prompt,
            max_output_tokens=output,
            history_allowance=True,
            near=near,
        )
        if isinstance(held, QuotaRefused):
            return Refused("quota", notice=held.note, in_thread=True)
        return HeldCredits(self.quotas, held)

    def _call(self, arrival: Arrival, channel_settings: ChannelSettings) -> tuple[Subject, int, int]:
        """Who pays for the turn's first call, its new message's tokens and its maximum output."""
        channel = None if arrival.kind is ConversationKind.DM else arrival.key.channel_id
        output = min(channel_settings.max_output_tokens or self._max_output, self._max_output)
        prompt = self._estimator.estimate_one(ChatMessage("user", arrival.text))
        return Subject(arrival.key.team_id, channel, arrival.user_id), prompt, output


class EarlyCredits:
    """A turn's hold taken in its admission claim's transaction (bot.conversation.admission.EarlyHold),
    when every limit stays far from full with it."""

    def __init__(self, quotas: Quotas, plan: FarHold) -> None:
        self._quotas, self._plan = quotas, plan

    async def take(self, session: AsyncSession) -> HeldCredits | None:
        held = await self._quotas.hold_far(session, self._plan)
        return None if held is None else HeldCredits(self._quotas, held)

    def ended(self, *, committed: bool) -> None:
        self._quotas.far_hold_ended(self._plan, committed=committed)


class HeldCredits:
    """One turn's reservation as admission sees it: ended by `settle` or `release`, once (a second end
    does nothing); `hand_over` gives its row to the turn's last ledger row to drop."""

    def __init__(self, quotas: Quotas, reservation: Reservation) -> None:
        self._quotas = quotas
        self.reservation = reservation
        self._ended = False

    async def extend(self, prompt_tokens: int, max_output_tokens: int) -> str | None:
        """Before the turn's next upstream call: hold its estimate instead of the last call's."""
        try:
            held = await self._quotas.extend(
                self.reservation, prompt_tokens=prompt_tokens, max_output_tokens=max_output_tokens
            )
        except UNAVAILABLE as exc:
            # Mid-answer, the database went away: the call goes ahead on the hold it has (the ledger
            # spools its row), rather than cutting an answer short on a check that could not run.
            log.warning("could not extend a quota reservation: %s", error_reason(exc))
            return None
        if isinstance(held, QuotaRefused):
            # The hold is gone with the refusal; settling still tells the alerts who spent.
            self.reservation = Reservation(None, self.reservation.subject, 0)
            return held.note
        self.reservation = held
        return None

    def hand_over(self) -> int | None:
        held = self.reservation.id
        self.reservation = replace(self.reservation, id=None)
        return held

    async def settle(self, outcome: TurnOutcome) -> None:
        """The turn's ledger row (with the reported credits) is written: the estimate stops counting."""
        usage = outcome.usage.usage if outcome.usage is not None else None
        await self._end(usage.credits_used if usage is not None else None)

    async def release(self) -> None:
        """No model call (refused later, could not start), or cancelled mid-call: the ledger has the
        cost when there was one; the hold goes either way."""
        await self._end(None)

    async def _end(self, spent: int | None) -> None:
        # Once: a second end would take the hold out of this process's sums twice.
        if self._ended:
            return
        self._ended = True
        await self._quotas.settle(self.reservation, spent=spent)
