"""Fitting a conversation into the model's context: a conservative token estimate and trimming.

No offline GLM tokenizer exists, so tokens are estimated from characters and the estimate is
calibrated with the `prompt_tokens` the API reports for requests we estimated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bot.llm.types import ChatMessage

# Roughly 3 characters a token for English and code; CJK text runs closer to 1, so start low.
_CHARS_PER_TOKEN = 2.5
_PER_MESSAGE_OVERHEAD = 8
_MIN_SCALE, _MAX_SCALE = 0.5, 4.0


class TokenEstimator:
    """Characters -> tokens, scaled by what the API actually counted, plus a safety margin."""

    def __init__(self, safety_margin: float = 1.1) -> None:
        self._scale = 1.0
        self._margin = safety_margin

    def estimate(self, messages: Sequence[ChatMessage]) -> int:
        return sum(self.estimate_one(m) for m in messages)

    def estimate_one(self, message: ChatMessage) -> int:
        raw = len(message.content) / _CHARS_PER_TOKEN + _PER_MESSAGE_OVERHEAD
        return math.ceil(raw * self._scale * self._margin)

    def estimate_text(self, text: str) -> int:
        """Tokens of bare text (no message overhead): e.g. an answer the model did not count."""
        return math.ceil(len(text) / _CHARS_PER_TOKEN * self._scale * self._margin)

    def calibrate(self, estimated: int, reported_prompt_tokens: int) -> None:
        """Move the scale towards what the API reported; an exponential average keeps it stable."""
        if estimated <= 0 or reported_prompt_tokens <= 0:
            return
        # estimated = raw * scale * margin, and the ideal scale makes raw * scale == reported.
        ideal = self._scale * self._margin * reported_prompt_tokens / estimated
        target = min(_MAX_SCALE, max(_MIN_SCALE, ideal))
        self._scale = 0.7 * self._scale + 0.3 * target

    @property
    def scale(self) -> float:
        return self._scale


@dataclass(frozen=True)
class TrimmedRequest:
    messages: tuple[ChatMessage, ...]
    estimated_tokens: int
    dropped_turns: int


class MessageTooLong(Exception):
    """The newest message alone does not fit the context budget."""

    def __init__(self, estimated: int, budget: int) -> None:
        super().__init__(f"message needs about {estimated} tokens; the budget is {budget}")
        self.estimated = estimated
        self.budget = budget


def prompt_budget(context_window: int, max_output_tokens: int) -> int:
    """Tokens available for the prompt: window minus reserved output minus a 5 % margin."""
    margin = max(256, context_window // 20)
    return max(1, context_window - max_output_tokens - margin)


def fit_to_budget(
    system: ChatMessage | None,
    history: Sequence[ChatMessage],
    newest: ChatMessage,
    budget: int,
    estimator: TokenEstimator,
) -> TrimmedRequest:
    """Keep the system prompt and the newest message; drop the oldest history turns until it fits."""
    fixed = [m for m in (system, newest) if m is not None]
    used = estimator.estimate(fixed)
    if used > budget:
        raise MessageTooLong(used, budget)
    kept: list[ChatMessage] = []
    for message in reversed(history):
        cost = estimator.estimate_one(message)
        if used + cost > budget:
            break
        kept.append(message)
        used += cost
    kept.reverse()
    # A reply without the question it answers confuses the model: start on a user turn.
    while kept and kept[0].role == "assistant":
        used -= estimator.estimate_one(kept.pop(0))
    head = [system] if system is not None else []
    return TrimmedRequest(
        messages=(*head, *kept, newest),
        estimated_tokens=used,
        dropped_turns=len(history) - len(kept),
    )
