"""Bench (f)'s reading of a thread: the bot's n-th message there answers the n-th turn it admitted."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from multidict import CIMultiDict

from bench.driver import Conversation
from bench.replicas import admitted_at
from tests.fakes.aimlapi import FakeAimlApi, RecordedRequest

ROOT = "1800000000.000001"


def _turn(n: int) -> Conversation:
    c = Conversation(n, "T1", "C1F0000", ROOT, f"[q:f0t{n}]")
    c.extra["turn"] = n
    return c


def _call(tag: str, at: float) -> RecordedRequest:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": f"Question {tag}"}]}
    return RecordedRequest("POST", "/chat/completions", CIMultiDict(), body, received_at=at)


def test_turns_are_placed_in_the_order_their_model_calls_came_not_the_order_they_were_sent() -> None:
    turns = [_turn(n) for n in range(4)]
    # Turn 1's event reached a busy replica: turn 2 was admitted and answered first; turn 3 has no
    # call yet.
    calls = [_call("[q:f0t0]", 1.0), _call("[q:f0t2]", 2.0), _call("[q:f0t1]", 3.0)]
    aiml = cast(FakeAimlApi, SimpleNamespace(chat_requests=calls))

    admitted_at(turns, aiml)

    assert [c.extra["answered_as"] for c in turns] == [0, 2, 1, 3]
