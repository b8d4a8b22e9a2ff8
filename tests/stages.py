"""Admission stages for tests of what a refusal leaves behind."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from bot.conversation.admission import Arrival, Candidate, Refused
from bot.conversation.person import Person


@dataclass
class Hesitant:
    """A policy stage that refuses the mention opening a thread once `go` is set, and lets the rest
    in (`refuse_others`: refuses them too, once `others_go` is set)."""

    go: asyncio.Event = field(default_factory=asyncio.Event)
    asked: asyncio.Event = field(default_factory=asyncio.Event)
    refuse_others: bool = False
    others_go: asyncio.Event = field(default_factory=asyncio.Event)
    others_asked: asyncio.Event = field(default_factory=asyncio.Event)
    needs_person: bool = False

    async def check(self, candidate: Candidate) -> Refused | None:
        arrival = candidate.arrival
        opening = arrival.addressed and not arrival.mid_thread
        if not opening and not self.refuse_others:
            return None
        asked, go = (self.asked, self.go) if opening else (self.others_asked, self.others_go)
        asked.set()
        await go.wait()
        return Refused("closed")


class Nobody:
    """People no stage asks about (no stage needs the person)."""

    async def person(self, arrival: Arrival) -> Person | None:  # noqa: ARG002
        return None
