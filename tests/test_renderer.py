"""Streaming a reply into a Slack thread, against the fake Slack Web API over loopback."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Hashable
from dataclasses import replace

import pytest
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.ports import ReplySummary
from bot.conversation.service import (
    NOTE_CUT_OFF,
    NOTE_EMPTY,
    NOTE_ONLY_REASONING,
    ConversationService,
    ServiceConfig,
    Turn,
)
from bot.llm.client import AimlClient
from bot.slack.edit_budget import EditBudget, EditBudgets
from bot.slack.renderer import (
    SlackDeliveryError,
    SlackReply,
)
from bot.slack.text import MAX_MESSAGE_CHARS, PLACEHOLDER
from bot.storage.conversations import ConversationKey
from bot.storage.models import ConversationKind, Message, MessageStatus, Role
from tests.fakes.aimlapi import FakeAimlApi, Reply
from tests.fakes.slack_api import FakeMessage, FakeSlackApi, RateLimit
from tests.harness import eventually

SUMMARY = ReplySummary(
    model="zhipu/glm-5", prompt_tokens=120, completion_tokens=340, credits_used=1234, finish_reason="stop"
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlackApi]:
    async with FakeSlackApi() as api:
        yield api


@pytest.fixture
def client(fake: FakeSlackApi) -> AsyncWebClient:
    return AsyncWebClient(base_url=fake.api_url, token="xoxb-test")


def _reply(
    fake: FakeSlackApi,
    client: AsyncWebClient,
    budget: EditBudget | None = None,
    channel: str = "C1",
    interval: float = 0.1,
) -> SlackReply:
    root = fake.add_message(channel, "<@UBOT> a question")
    return SlackReply(client, budget or EditBudget(), channel, root, interval=interval)


async def _stream(reply: SlackReply, answer: str, chunk: int = 25, pause: float = 0.0) -> None:
    for i in range(0, len(answer), chunk):
        await reply.append(answer[i : i + chunk])
        await asyncio.sleep(pause)


def _shown(fake: FakeSlackApi, reply: SlackReply, channel: str = "C1") -> list[FakeMessage]:
    return [fake.message(channel, ts) for ts in reply.refs]


def _edit_times(fake: FakeSlackApi) -> dict[str, list[float]]:
    """When each message's accepted edits arrived at Slack, per ts."""
    times: dict[str, list[float]] = defaultdict(list)
    for call in fake.calls_to("chat.update"):
        if call.ok:
            times[call.params["ts"]].append(call.time)
    return times


def _assert_edits_spaced(fake: FakeSlackApi, interval: float) -> None:
    for ts, times in _edit_times(fake).items():
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert all(gap >= interval - 0.001 for gap in gaps), (ts, gaps)


def _prose(words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocabulary = ["stream", "slack", "model", "token", "reply", "edit", "the", "a", "with", "limit"]
    sentences = []
    for _ in range(words // 8):
        sentences.append(" ".join(rng.choices(vocabulary, k=8)).capitalize() + ".")
    return " ".join(sentences)


async def test_a_conversation_turn_streams_through_a_slack_reply_into_the_thread(
    fake: FakeSlackApi,
    client: AsyncWebClient,
    aiml: FakeAimlApi,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    aiml.enqueue(Reply(content="Streamed into Slack.", chunk_size=3, chunk_interval=0.01, credits_used=42))
    reply = _reply(fake, client, interval=0.05)
    root = fake.messages("C1")[0].ts
    async with AimlClient(api_key=aiml.api_key, base_url=aiml.base_url, model="zhipu/glm-5") as llm:
        service = ConversationService(sessions, llm, ServiceConfig("Be brief.", 200_000, 1_000))
        await reply.start()
        turn = Turn(ConversationKey("T1", "C1", root), ConversationKind.CHANNEL, "Hi", "U1")
        outcome = await service.reply(turn, reply)

    [message] = _shown(fake, reply)
    assert outcome.status is MessageStatus.COMPLETE
    assert message.markdown == "Streamed into Slack."
    assert "glm-5" in message.context and "42 credits" in message.context
    async with sessions() as session:
        stored = (await session.scalars(select(Message).where(Message.role == Role.ASSISTANT))).one()
    assert (stored.content, stored.slack_ts) == ("Streamed into Slack.", message.ts)


async def test_the_placeholder_is_posted_in_the_thread_at_once(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    reply = _reply(fake, client)
    await reply.start()
    thread = fake.thread("C1", fake.messages("C1")[0].ts)
    assert [m.ts for m in thread[1:]] == list(reply.refs)
    assert thread[1].text == PLACEHOLDER
    assert thread[1].bot_id == "BBOT"
    await reply.finish(SUMMARY)


async def test_edits_are_spaced_by_the_interval_and_the_final_text_is_exact(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    reply = _reply(fake, client, interval=0.25)
    await reply.start()
    answer = _prose(200)
    await _stream(reply, answer, chunk=12, pause=0.01)
    await reply.finish(SUMMARY)

    [message] = _shown(fake, reply)
    assert message.markdown == answer
    assert message.text == answer
    assert "zhipu/glm-5 · 460 tokens (120 in, 340 out) · 1,234 credits" in message.context
    assert answer not in message.context
    assert message.edits >= 3, "the text appeared while it streamed"
    _assert_edits_spaced(fake, 0.25)


async def test_quick_appends_are_coalesced_into_a_few_edits(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    reply = _reply(fake, client, interval=0.2)
    await reply.start()
    parts = [f"part {i}, " for i in range(100)]
    for part in parts:
        await reply.append(part)
        await asyncio.sleep(0)
    await reply.finish(SUMMARY)

    [message] = _shown(fake, reply)
    assert message.markdown == "".join(parts)
    assert len(fake.calls_to("chat.update")) <= 3


async def test_a_long_answer_with_code_continues_in_new_messages_that_join_to_the_answer(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    code = "```python\n" + "".join(f"total += values[{i}]  # step {i}\n" for i in range(60)) + "```\n\n"
    answer = _prose(500, seed=1) + "\n\n" + code + _prose(400, seed=2) + "\n\n" + code + _prose(300)
    assert len(answer) > 10_000
    reply = _reply(fake, client, interval=0.05)
    await reply.start()
    await _stream(reply, answer, chunk=200)
    await reply.finish(SUMMARY)

    messages = _shown(fake, reply)
    assert len(messages) >= 3
    assert all(len(m.text) <= 4_000 and len(m.markdown) <= MAX_MESSAGE_CHARS for m in messages)
    assert "".join(m.markdown for m in messages) == answer
    assert all(m.markdown.count("```") % 2 == 0 for m in messages), "no message ends inside code"
    assert [m.context for m in messages[:-1]] == [""] * (len(messages) - 1)
    assert "zhipu/glm-5" in messages[-1].context
    assert [m.ts for m in fake.thread("C1", messages[0].thread_ts or "")[1:]] == list(reply.refs)


async def test_a_code_block_longer_than_a_message_is_closed_and_reopened_across_messages(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    body = "".join(f"print('line {i}')\n" for i in range(600))
    answer = "Here it is:\n\n```python\n" + body + "```\n\nThat is all."
    reply = _reply(fake, client, interval=0.05)
    await reply.start()
    await _stream(reply, answer, chunk=500)
    await reply.finish(SUMMARY)

    messages = [m.markdown for m in _shown(fake, reply)]
    assert len(messages) >= 3
    assert all(m.count("```") % 2 == 0 for m in messages)
    assert all(m.startswith("```python\n") for m in messages[1:])
    rejoined = messages[0]
    for m in messages[1:]:  # undo each close-and-reopen of the fence
        if m.startswith("```python\n"):
            rejoined = rejoined.removesuffix("```") + m.removeprefix("```python\n")
        else:
            rejoined += m
    assert rejoined == answer


async def test_the_final_text_lands_after_three_429s_in_a_row(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    budget = EditBudget()
    reply = _reply(fake, client, budget, interval=0.05)
    await reply.start()
    await reply.append("The whole answer.")
    fake.fail_next("chat.update", error="ratelimited", status=429, retry_after=1, times=3)
    await reply.finish(SUMMARY)

    [message] = _shown(fake, reply)
    assert message.markdown == "The whole answer."
    assert fake.count_429s == 3
    assert budget.rate_per_minute < 45.0, "the budget learned from the 429s"


async def test_rate_limits_reach_the_budget_even_when_the_client_retries_429s_itself(
    fake: FakeSlackApi,
) -> None:
    client = AsyncWebClient(
        base_url=fake.api_url, token="xoxb-test", retry_handlers=[AsyncRateLimitErrorRetryHandler()]
    )
    budget = EditBudget()
    reply = _reply(fake, client, budget, interval=0.05)
    await reply.start()
    await reply.append("Answer.")
    fake.fail_next("chat.update", error="ratelimited", status=429, retry_after=1)
    await reply.finish(SUMMARY)
    assert budget.rate_per_minute < 45.0
    assert _shown(fake, reply)[0].markdown == "Answer."


async def test_failing_mid_stream_shows_the_partial_answer_and_a_note(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    reply = _reply(fake, client)
    await reply.start()
    await reply.append("The first half of an answer")
    await reply.fail("The model stopped responding. Please try again.")

    [message] = _shown(fake, reply)
    assert message.markdown == "The first half of an answer"
    assert "The model stopped responding" in message.context
    assert PLACEHOLDER not in message.text


async def test_failing_before_any_text_replaces_the_placeholder_with_the_note(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    reply = _reply(fake, client)
    await reply.start()
    await reply.fail("You are out of credits.")
    [message] = _shown(fake, reply)
    assert message.markdown == ""
    assert "You are out of credits." in message.context
    assert message.text == "You are out of credits."


async def test_an_answer_of_only_reasoning_ends_with_a_note_not_an_empty_message(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    reply = _reply(fake, client)
    await reply.start()
    await reply.thinking()
    await reply.finish(replace(SUMMARY, note=NOTE_ONLY_REASONING))
    [message] = _shown(fake, reply)
    assert message.markdown == ""
    assert NOTE_ONLY_REASONING in message.context
    assert message.text != PLACEHOLDER


async def test_an_empty_answer_without_reasoning_says_the_answer_was_empty(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    reply = _reply(fake, client)
    await reply.start()
    await reply.finish(replace(SUMMARY, note=NOTE_EMPTY))
    [message] = _shown(fake, reply)
    assert message.markdown == ""
    assert NOTE_EMPTY in message.context
    assert message.text == NOTE_EMPTY


async def test_a_placeholder_that_cannot_be_posted_raises_and_fail_stays_quiet(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    fake.known_channels = {"C-other"}
    reply = _reply(fake, client)
    with pytest.raises(SlackDeliveryError):
        await reply.start()
    await reply.fail("Something went wrong.")
    assert reply.refs == ()


async def test_a_rate_limited_continuation_message_is_posted_after_retry_after(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    answer = _prose(1000, seed=3)
    reply = _reply(fake, client, interval=0.05)
    await reply.start()
    fake.fail_next("chat.postMessage", error="ratelimited", status=429, retry_after=1)
    await reply.append(answer)
    await reply.finish(SUMMARY)
    messages = _shown(fake, reply)
    assert len(messages) == 2
    assert "".join(m.markdown for m in messages) == answer
    rejected, accepted = fake.calls_to("chat.postMessage")[1:3]
    assert rejected.status == 429
    assert accepted.time - rejected.time >= 1.0


async def test_an_answer_cut_at_the_length_limit_says_so_outside_the_answer(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    reply = _reply(fake, client)
    await reply.start()
    await reply.append("An answer that")
    await reply.finish(
        ReplySummary(
            model="zhipu/glm-5", prompt_tokens=None, completion_tokens=None, credits_used=None,
            finish_reason="length", note=NOTE_CUT_OFF,
        )
    )  # fmt: skip
    [message] = _shown(fake, reply)
    assert message.markdown == "An answer that"
    assert NOTE_CUT_OFF in message.context
    assert "tokens" not in message.context


async def test_a_cancelled_turn_still_ends_the_message_from_its_finally_block(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    reply = _reply(fake, client)
    await reply.start()

    async def turn() -> None:
        try:
            await reply.append("Partial")
            await asyncio.sleep(30)
        finally:
            await reply.fail("The reply was interrupted.")

    task = asyncio.create_task(turn())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [message] = _shown(fake, reply)
    assert message.markdown == "Partial"
    assert "interrupted" in message.context


async def test_an_edit_rejected_as_too_long_is_split_further(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    answer = _prose(300)
    reply = _reply(fake, client, interval=0.05)
    await reply.start()
    await reply.append(answer)
    fake.fail_next("chat.update", error="msg_too_long")
    await reply.finish(SUMMARY)
    messages = _shown(fake, reply)
    assert len(messages) == 2
    assert "".join(m.markdown for m in messages) == answer


async def test_a_reply_message_someone_deleted_continues_in_a_new_one(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    reply = _reply(fake, client, interval=0.05)
    await reply.start()
    deleted = reply.refs[0]
    fake.delete_message("C1", deleted)
    await reply.append("Still here.")
    await reply.finish(SUMMARY)
    [message] = _shown(fake, reply)
    assert message.ts != deleted
    assert message.markdown == "Still here."
    assert "zhipu/glm-5" in message.context


async def test_twenty_concurrent_streams_in_one_workspace_all_complete(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    fake.limits["chat.update"] = RateLimit(per_minute=600, burst=10)
    budget = EditBudget(rate_per_minute=1200, burst=5)  # set too high: it must adapt to Slack
    channels = [f"C{i:02d}" for i in range(20)]
    replies = [_reply(fake, client, budget, channel, interval=0.3) for channel in channels]
    answers = [_prose(120, seed=i) for i in range(20)]

    async def run(reply: SlackReply, answer: str) -> None:
        await reply.start()
        await _stream(reply, answer, chunk=10, pause=0.02)
        await reply.finish(SUMMARY)

    await asyncio.gather(*(run(r, a) for r, a in zip(replies, answers, strict=True)))
    for channel, reply, answer in zip(channels, replies, answers, strict=True):
        assert "".join(m.markdown for m in _shown(fake, reply, channel)) == answer
    _assert_edits_spaced(fake, 0.3)
    # The budget starts at twice Slack's rate, so Slack must refuse something before it adapts; each
    # 429 blocks every stream's edits for Retry-After and cuts the rate by 30 %, so two bring it under
    # Slack's 600 a minute. Allowing an edit already in flight with each: at most 4, not one a stream.
    assert 1 <= fake.count_429s <= 4
    assert budget.rate_per_minute < 1200


async def test_ten_replies_starting_at_once_in_one_channel_all_get_their_message(
    fake: FakeSlackApi, client: AsyncWebClient
) -> None:
    # Slack posts about one message a second per channel (a burst of 3 here): the last placeholder
    # waits about seven seconds, behind more than five 429s, and must still be posted.
    budget = EditBudget()
    replies = [_reply(fake, client, budget) for _ in range(10)]

    async def run(reply: SlackReply, index: int) -> None:
        await reply.start()
        await reply.append(f"Answer {index}.")
        await reply.finish(SUMMARY)

    await asyncio.gather(*(run(reply, i) for i, reply in enumerate(replies)))
    for i, reply in enumerate(replies):
        [message] = _shown(fake, reply)
        assert message.markdown == f"Answer {i}."
    assert fake.count_429s >= 6, "the channel's posting limit was reached"


SCALES = [
    pytest.param(10, id="10x-rates"),  # Slack 10x faster: a quick check of the same sharing
    pytest.param(1, id="slack-rates"),  # the case at Slack's real rate: about 75 s
]


@pytest.mark.parametrize("scale", SCALES)
async def test_fifty_streams_in_fifty_channels_share_a_tight_edit_limit(
    fake: FakeSlackApi, client: AsyncWebClient, scale: int
) -> None:
    if scale != 1:  # otherwise Slack's own limits, the fake's defaults
        fake.limits["chat.update"] = RateLimit(per_minute=50 * scale, burst=10)
    budget = EditBudgets(rate_per_minute=45 * scale, burst=5).for_team("T1")
    channels = [f"C{i:02d}" for i in range(50)]
    replies = [_reply(fake, client, budget, channel, interval=0.5) for channel in channels]
    answers = [_prose(160, seed=i) for i in range(50)]

    async def run(reply: SlackReply, answer: str) -> None:
        await reply.start()
        await _stream(reply, answer, chunk=max(1, len(answer) // 80), pause=0.1)  # about 8 s
        await reply.finish(SUMMARY)

    await asyncio.gather(*(run(r, a) for r, a in zip(replies, answers, strict=True)))
    for channel, reply, answer in zip(channels, replies, answers, strict=True):
        [message] = _shown(fake, reply, channel)
        assert message.markdown == answer
        assert "zhipu/glm-5" in message.context
    # The shared budget (45 a minute per scale, burst 5) stays inside Slack's limit (50 per scale,
    # burst 5 or more): Slack never has to refuse an edit.
    assert fake.count_429s == 0
    _assert_edits_spaced(fake, 0.5)


class _RecordingBudget(EditBudget):
    """Records which edits asked for a final's slot."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[bool] = []

    async def acquire(self, stream: Hashable, *, final: bool = False) -> None:
        self.asked.append(final)
        await super().acquire(stream, final=final)


async def test_the_first_text_over_a_placeholder_with_a_stop_button_goes_with_the_final_edits(fake, client):
    budget = _RecordingBudget()
    root = fake.add_message("C1", "<@UBOT> a question")
    reply = SlackReply(client, budget, "C1", root, interval=0.05, stop_value="1700000000.000001")
    await reply.start()  # the placeholder, with its Stop button
    await reply.append("The first words")
    await eventually(lambda: budget.asked != [])
    await reply.finish(SUMMARY)

    assert budget.asked[0] is True  # what people wait for, ahead of other replies' interim edits
    assert [m.markdown for m in _shown(fake, reply)] == ["The first words"]
