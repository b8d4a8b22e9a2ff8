"""The admission pipeline in the domain, on a real database (SQLite and PostgreSQL) and the fake AI/ML API:
stage order, what a refusal leaves behind, and the credit reservation's end on every path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.admission import Admission, Admitted, Arrival, Candidate, Refused
from bot.conversation.channel_settings import ChannelSettings
from bot.conversation.handoff import Handoff
from bot.conversation.keys import ConversationKey, ConversationKind
from bot.conversation.ordering import HandedOff, TurnOrder
from bot.conversation.person import Person
from bot.conversation.ports import ReplyNotShown
from bot.conversation.service import NOTE_TAKEN_OVER, ConversationService, ServiceConfig, TurnOutcome
from bot.conversation.turns import Turns
from bot.llm.client import AimlClient
from bot.llm.types import ChatMessage
from bot.storage.conversations import create_conversation
from bot.storage.models import Conversation, ProcessedEvent
from tests.fakes.aimlapi import FakeAimlApi, Reply
from tests.sinks import RecordingSink
from tests.stages import Hesitant
from tests.thread_reads import thread_reads

ROOT = "1700000000.000100"
KEY = ConversationKey("T1", "C1", ROOT)


def arrival(ts: str = ROOT, *, event_id: str | None = None, addressed: bool = True) -> Arrival:
    return Arrival(
        event_id=event_id or f"Ev{ts}",
        key=KEY,
        kind=ConversationKind.CHANNEL,
        user_id="U1",
        message_ts=ts,
        text=f"question {ts}",
        addressed=addressed,
        mid_thread=ts != ROOT,
    )


@dataclass
class Gate:
    """A policy stage that refuses while `open` is False, and counts what it was asked."""

    open: bool = False
    asked: list[Candidate] = field(default_factory=list)
    needs_person: bool = True

    async def check(self, candidate: Candidate) -> Refused | None:
        self.asked.append(candidate)
        return None if self.open else Refused("closed", notice="Not here, sorry.")


@dataclass
class Hold:
    """A credit reservation that records how it ended."""

    ends: list[str]

    async def extend(self, prompt_tokens: int, max_output_tokens: int) -> str | None:  # noqa: ARG002
        self.ends.append("extended")
        return None

    def hand_over(self) -> int | None:
        return None  # nothing held in a database: the ledger has no row to drop

    async def settle(self, outcome: TurnOutcome) -> None:
        self.ends.append(f"settled {outcome.status.value}")

    async def release(self) -> None:
        self.ends.append("released")


@dataclass
class EarlyHold:
    """Credits held in the claim's transaction; records that, and how the transaction ended."""

    ends: list[str]

    async def take(self, session: object) -> Hold:  # noqa: ARG002
        self.ends.append("held with the claim")
        return Hold(self.ends)

    def ended(self, *, committed: bool) -> None:
        self.ends.append("claim committed" if committed else "claim rolled back")


@dataclass
class Quota:
    refuse: bool = False
    ends: list[str] = field(default_factory=list)
    early: bool = False  # far from every limit: the credits are held with the claim

    async def plan(self, arrival: Arrival, channel: ChannelSettings) -> EarlyHold | None:  # noqa: ARG002
        return EarlyHold(self.ends) if self.early else None

    async def reserve(self, candidate: Candidate, *, near: bool = False) -> Hold | Refused:  # noqa: ARG002
        if self.refuse:
            return Refused("quota_reached", notice="Your daily credits are used up.", in_thread=True)
        return Hold(self.ends)


class StartedSink(RecordingSink):
    async def start(self) -> None:
        self.events.append("start")

    async def release(self) -> None:
        self.events.append("release")


class UnshownSink(StartedSink):
    async def start(self) -> None:
        raise ReplyNotShown


@dataclass
class Surface:
    """Records what the domain asked the surface to show."""

    told: list[tuple[str, bool]] = field(default_factory=list)
    sinks: list[StartedSink] = field(default_factory=list)
    looked_up: int = 0
    shown: bool = True

    async def person(self, arrival: Arrival) -> Person:
        self.looked_up += 1
        return Person(arrival.user_id, team_id="T1")

    def reply_to(self, arrival: Arrival, placeholder: str | None = None) -> StartedSink:  # noqa: ARG002
        sink = StartedSink() if self.shown else UnshownSink()
        self.sinks.append(sink)
        return sink

    async def prompt_text(self, arrival: Arrival) -> str:
        return arrival.text

    async def thread_context(self, arrival: Arrival, reply_refs: Sequence[str]) -> Sequence[ChatMessage]:  # noqa: ARG002
        return ()

    async def show_waiting(self, arrival: Arrival) -> None:
        pass

    async def situation(self, arrival: Arrival, question: str, *, new_thread: bool) -> Sequence[str]:  # noqa: ARG002
        return ()

    async def tell(self, arrival: Arrival, note: str, *, in_thread: bool) -> None:  # noqa: ARG002
        self.told.append((note, in_thread))


@pytest.fixture
async def llm(aiml: FakeAimlApi) -> AsyncIterator[AimlClient]:
    client = AimlClient(api_key="test-key", base_url=aiml.base_url, model="zhipu/glm-5", backoff_base=0.01)
    yield client
    await client.aclose()


def pipeline(
    sessions: async_sessionmaker[AsyncSession],
    llm: AimlClient,
    *,
    gate: Gate | None = None,
    quota: Quota | None = None,
) -> Turns:
    admission = Admission(
        sessions, TurnOrder(), thread_followups=True, stages=[gate] if gate else (), quota=quota
    )
    return Turns(admission, ConversationService(sessions, llm, ServiceConfig("", 200_000, 1000)))


async def count(sessions: async_sessionmaker[AsyncSession], model: type[object]) -> int:
    async with sessions() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def test_a_refused_message_is_not_answered_and_its_redelivery_is_judged_afresh(sessions, llm, aiml):
    gate, surface = Gate(), Surface()
    turns = pipeline(sessions, llm, gate=gate)

    assert await turns.handle(arrival(), surface) is None
    assert surface.told == [("Not here, sorry.", False)] and aiml.requests == []
    assert await count(sessions, ProcessedEvent) == 0  # the claim was given back

    gate.open = True  # the person was let in before Slack redelivered the event
    aiml.enqueue(Reply(content="Now yes."))
    outcome = await turns.handle(arrival(), surface)
    assert outcome is not None and outcome.content == "Now yes."
    assert len(aiml.requests) == 1


async def test_a_refused_first_mention_leaves_no_thread_for_follow_ups_to_join(sessions, llm, aiml):
    gate = Gate()
    turns = pipeline(sessions, llm, gate=gate)
    await turns.handle(arrival(), Surface())
    assert await count(sessions, Conversation) == 0

    gate.open = True
    follow_up = arrival("1700000000.000200", addressed=False)
    assert await turns.admission.admit(follow_up, Surface()) == Refused("thread_not_joined")
    assert aiml.requests == []


async def test_only_the_claim_that_inserted_the_thread_knows_it_holds_nothing_yet(sessions, llm):
    turns = pipeline(sessions, llm, gate=Gate(open=True))
    first = await turns.admission.admit(arrival(), Surface())
    assert isinstance(first, Admitted) and first.new_thread and first.opened is not None
    first.ticket.leave()
    async with sessions() as session:
        (conversation,) = (await session.execute(select(Conversation.id))).scalars()
    assert first.opened == conversation

    # The thread's next turns read its history: earlier turns may have stored answers in it by then.
    follow_up = await turns.admission.admit(arrival("1700000000.000200", addressed=False), Surface())
    assert isinstance(follow_up, Admitted) and follow_up.opened is None
    follow_up.ticket.leave()


async def test_a_claim_that_inserts_the_thread_behind_an_earlier_turn_reads_the_history(sessions, llm):
    # An earlier turn still holds the thread's line while the thread's row is gone (a refused first
    # mention forgot it): the row this claim inserts may get that turn's messages before this one begins.
    turns = pipeline(sessions, llm, gate=Gate(open=True))
    first = await turns.admission.admit(arrival(), Surface())
    assert isinstance(first, Admitted)
    async with sessions.begin() as session:
        await session.execute(delete(Conversation))
    again = await turns.admission.admit(arrival("1700000000.000300"), Surface())
    assert isinstance(again, Admitted) and again.new_thread and again.opened is None
    again.ticket.leave()
    first.ticket.leave()


async def test_a_first_mention_reads_its_thread_once_from_event_to_stored_answer(engine, sessions, llm, aiml):
    turns = pipeline(sessions, llm, gate=Gate(open=True))
    aiml.enqueue(Reply(content="Hello."))
    with thread_reads(engine) as reads:
        outcome = await turns.handle(arrival(), Surface())

    assert outcome is not None and outcome.content == "Hello."
    assert len(reads) == 1 and "FROM conversations" in reads[0]  # the claim's look-up, locked


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_refused_claim_leaves_the_thread_another_claim_inserted_meanwhile(sessions):
    # Two first messages of one new thread at once: the second claim waits on the first's insert of
    # the thread's row, then uses it. Refused, it must not delete that row: the first turn, in line,
    # may be admitted and its reply not stored yet (its place would go with the row).
    order = TurnOrder()
    admission = Admission(sessions, order, thread_followups=True, stages=[Gate()])
    async with sessions.begin() as first:
        assert await create_conversation(first, KEY, ConversationKind.CHANNEL) is not None
        in_line = order.enter(KEY)  # the first claim's turn
        second = asyncio.create_task(admission.admit(arrival(), Surface()))
        await asyncio.sleep(0.3)  # the second claim now waits for the first's insert
        assert not second.done()
    assert await second == Refused("closed", notice="Not here, sorry.")
    assert await count(sessions, Conversation) == 1
    in_line.leave()


async def test_a_refused_first_mention_keeps_the_thread_a_follow_up_joined_meanwhile(sessions):
    # The follow-up was admitted into the thread while the first mention was still being vetted:
    # it answers the thread, so the thread's row stays (on PostgreSQL its place would go with it).
    gate = Hesitant()
    admission = Admission(sessions, TurnOrder(), thread_followups=True, stages=[gate])
    first = asyncio.create_task(admission.admit(arrival(), Surface()))
    await asyncio.wait_for(gate.asked.wait(), timeout=5)
    follow_up = await admission.admit(arrival("1700000000.000200", addressed=False), Surface())
    assert isinstance(follow_up, Admitted)
    gate.go.set()
    assert await first == Refused("closed")
    assert await count(sessions, Conversation) == 1
    follow_up.ticket.leave()


async def test_a_thread_whose_every_claim_was_refused_is_forgotten_by_the_last(sessions):
    # The follow-up joined while the first mention was vetted; the mention is refused first (the
    # follow-up still in line keeps the thread), then the follow-up: it forgets the thread, though
    # it did not insert its row (or the empty row would let anyone's follow-ups in).
    gate = Hesitant(refuse_others=True)
    admission = Admission(sessions, TurnOrder(), thread_followups=True, stages=[gate])
    first = asyncio.create_task(admission.admit(arrival(), Surface()))
    await asyncio.wait_for(gate.asked.wait(), timeout=5)
    follow_up = asyncio.create_task(admission.admit(arrival("1700000000.000200", addressed=False), Surface()))
    await asyncio.wait_for(gate.others_asked.wait(), timeout=5)
    gate.go.set()
    assert await first == Refused("closed")
    assert await count(sessions, Conversation) == 1  # the follow-up is still in line
    gate.others_go.set()
    assert await follow_up == Refused("closed")
    assert await count(sessions, Conversation) == 0
    stray = await admission.admit(arrival("1700000000.000300", addressed=False), Surface())
    assert stray == Refused("thread_not_joined")


async def test_duplicates_and_unjoined_threads_are_refused_before_any_policy_is_asked(sessions, llm, aiml):
    gate, surface = Gate(open=True), Surface()
    turns = pipeline(sessions, llm, gate=gate)
    aiml.enqueue(Reply(content="Once."))
    await turns.handle(arrival(), surface)
    asked = len(gate.asked)

    twin = arrival(event_id="EvTwin")  # the message event of the same mention
    assert await turns.admission.admit(twin, surface) == Refused("duplicate")
    stray = Arrival(
        "EvStray", ConversationKey("T1", "C1", "1.5"), ConversationKind.CHANNEL, "U1", "1.6", "x", False
    )
    assert await turns.admission.admit(stray, surface) == Refused("thread_not_joined")
    assert (len(gate.asked), surface.looked_up) == (asked, asked)
    assert len(aiml.requests) == 1


async def test_a_quota_refusal_is_said_once_in_the_thread_and_never_calls_the_model(sessions, llm, aiml):
    surface = Surface()
    turns = pipeline(sessions, llm, quota=Quota(refuse=True))
    assert await turns.handle(arrival(), surface) is None
    assert surface.told == [("Your daily credits are used up.", True)]
    # The line in the thread is the message's one response: its twin does not post it again.
    assert await turns.handle(arrival(event_id="EvTwin"), surface) is None
    assert surface.told == [("Your daily credits are used up.", True)]
    assert aiml.requests == [] and await count(sessions, Conversation) == 0


async def test_a_reservation_is_settled_after_the_answer_and_released_when_the_reply_never_showed(
    sessions, llm, aiml
):
    quota = Quota()
    turns = pipeline(sessions, llm, quota=quota)
    aiml.enqueue(Reply(content="Answered."))
    await turns.handle(arrival(), Surface())
    assert quota.ends == ["settled complete"]

    await turns.handle(arrival("1700000000.000300"), Surface(shown=False))
    assert quota.ends == ["settled complete", "released"]
    assert len(aiml.requests) == 1
    # The message that could not be shown was given back for Slack's retry.
    async with sessions() as session:
        claimed = (await session.execute(select(ProcessedEvent.message_ts))).scalars().all()
    assert list(claimed) == [ROOT]


async def test_credits_held_with_the_claim_are_used_for_the_turn_and_given_back_on_a_refusal(
    sessions, llm, aiml
):
    gate, quota = Gate(open=True), Quota(early=True)
    turns = pipeline(sessions, llm, gate=gate, quota=quota)
    aiml.enqueue(Reply(content="Answered."))
    await turns.handle(arrival(), Surface())
    # One transaction claimed the message and held the credits; the turn ran on that hold.
    assert quota.ends == ["held with the claim", "claim committed", "settled complete"]

    gate.open, quota.ends[:] = False, []
    assert await turns.handle(arrival("1700000000.000300"), Surface()) is None
    assert quota.ends == ["held with the claim", "claim committed", "released"]
    quota.ends[:] = []
    assert await turns.admission.admit(arrival(event_id="EvTwin"), Surface()) == Refused("duplicate")
    assert quota.ends == ["claim committed"]  # refused before any hold: nothing to give back
    assert len(aiml.requests) == 1


async def test_without_a_policy_nobody_is_looked_up(sessions, llm, aiml):
    surface = Surface()
    aiml.enqueue(Reply(content="Hi."))
    admitted = await pipeline(sessions, llm).admission.admit(arrival(), surface)
    assert isinstance(admitted, Admitted) and admitted.candidate.person is None
    assert surface.looked_up == 0
    admitted.ticket.leave()


async def test_a_streaming_reply_gives_way_while_another_message_is_being_admitted(sessions, llm, aiml):
    turns = pipeline(sessions, llm)
    surface = Surface()
    arrivals = turns._service.arrivals
    arrivals._at_most = 10.0  # long enough that only the arrival's end can free it
    aiml.enqueue(Reply(content="Given way."))
    other = arrivals.arrive()  # a message between its event and its status
    answering = asyncio.create_task(turns.handle(arrival(), surface))

    async def started() -> bool:
        return bool(surface.sinks) and surface.sinks[0].events[:1] == ["start"]

    for _ in range(500):
        if await started():
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    assert surface.sinks[0].text == "" and not answering.done()  # its status is up; its text waits
    assert arrivals.waiting == 1  # this reply's own arrival ended when its reply started
    other.shown()
    outcome = await asyncio.wait_for(answering, 5.0)
    assert outcome is not None and outcome.content == "Given way." and surface.sinks[0].text == "Given way."
    assert arrivals.waiting == 0


async def _taken_over(*_args: object) -> None:
    raise HandedOff  # another replica adopted the turn while this one stalled before storing it


async def test_a_turn_taken_over_before_storing_says_so_in_its_own_placeholder(sessions, llm, aiml):
    turns, surface = pipeline(sessions, llm), Surface()
    turns._service._begin = _taken_over  # type: ignore[method-assign,assignment]

    assert await turns.handle(arrival(), surface) is not None
    [sink] = surface.sinks
    assert sink.failure == NOTE_TAKEN_OVER and "release" not in sink.events
    assert aiml.requests == []


async def test_a_turn_taken_over_leaves_alone_the_placeholder_the_adopter_answers_in(sessions, llm, aiml):
    turns, surface = pipeline(sessions, llm), Surface()
    turns._service._begin = _taken_over  # type: ignore[method-assign,assignment]
    ticket = TurnOrder().enter(ConversationKey("T1", "C1", ROOT))
    # Adopted with the placeholder its first replica posted, which this sink shows (StartedSink's ref).
    handoff = Handoff(arrival(), new_thread=True, placeholder="1700000000.000001")

    outcome = await turns.resume(handoff, ticket, surface)

    assert outcome is not None and outcome.label == "handed off"
    [sink] = surface.sinks
    assert sink.events[-1] == "release" and sink.failure is None
    assert aiml.requests == []
