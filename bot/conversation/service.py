"""Turn handling: load a thread's history, ask the model, stream into a reply sink, store it all."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.budget import MessageTooLong, TokenEstimator, fit_to_budget, prompt_budget
from bot.conversation.channel_settings import DEFAULT_CHANNEL_SETTINGS, ChannelSettings
from bot.conversation.lease import ReplyLease
from bot.conversation.ledger import Ledger, completion_entry
from bot.conversation.ordering import HandedOff, Place
from bot.conversation.person import Person
from bot.conversation.ports import CallBudget, ChatModel, ChatStreamLike, ReplySink, ReplySummary
from bot.conversation.priority import GIVE_WAY_PER_REPLY, Arrivals
from bot.conversation.settings_rules import SettingsBounds, plan_turn
from bot.conversation.stop import StopHandle, Stopped, StopRequest, unless_stopped
from bot.conversation.tool_history import replay
from bot.conversation.tool_loop import LoopTurn, RoundRequest, StreamEnd, ToolEvents, ToolLimits, ToolLoop
from bot.conversation.tools import Approver, ToolBox, ToolContext
from bot.llm.errors import LLMError
from bot.llm.types import ChatMessage, CompletionResult
from bot.storage import conversations as repo
from bot.storage.conversations import ConversationKey
from bot.storage.db import UNAVAILABLE, error_reason
from bot.storage.models import ConversationKind, Message, MessageStatus, Role
from bot.storage.usage import UsageEntry

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 5.0

NOTE_DATABASE = "I can't reach my database right now, so I can't answer. Please try again in a minute."
NOTE_TOO_LONG = "Your message is too long for the model's context window. Please shorten it or split it up."
NOTE_INTERRUPTED = "The answer was interrupted."
NOTE_CUT_OFF = "The answer was cut off at the length limit."
NOTE_TAKEN_OVER = "Another instance of the bot is answering this message."
NOTE_EMPTY = "The model returned no answer text. Please try rephrasing."
NOTE_ONLY_REASONING = "The model spent its whole output budget thinking and gave no answer."
NOTE_STOPPED_BY = "Stopped by"  # then the person's name
# The usage status of a completion a person stopped; its message is `complete`: what was shown is
# the answer the person chose to keep, and the next turn's history includes it.
STOPPED = "stopped"


@dataclass(frozen=True)
class Turn:
    """A new person message in a conversation."""

    key: ConversationKey
    kind: ConversationKind
    text: str
    user_id: str | None
    # Earlier thread messages the bot never saw, used once when the conversation is new.
    backfill: Sequence[ChatMessage] = ()
    # The channel's prompt, model and output limit (bot.conversation.settings_rules bounds them).
    channel: ChannelSettings = DEFAULT_CHANNEL_SETTINGS
    # Facts about where the person is, worded by the chat surface (e.g. the channel they view):
    # added to this turn's system prompt only, never stored in the history.
    context: Sequence[str] = ()
    # Who asks, when the surface knew (tools check what they may read on the person's behalf).
    person: Person | None = None
    # The credits admission held for the turn: asked again before each further upstream call.
    budget: CallBudget | None = None
    # Its place in the thread's line, told when the reply is stored (bot.conversation.ordering).
    place: Place | None = None
    # The conversation its admission opened, which holds nothing yet: no look-up, no history read.
    opened: int | None = None


@dataclass(frozen=True)
class TurnOutcome:
    status: MessageStatus
    content: str
    conversation_id: int | None
    usage: CompletionResult | None
    label: str = "complete"  # "complete", "stopped", "cancelled", or the upstream error kind (bot.llm.errors)


_StreamEnd = StreamEnd  # one round's end (bot.conversation.tool_loop)


@dataclass(frozen=True)
class ServiceConfig:
    system_prompt: str
    context_window: int
    max_output_tokens: int  # the default, and the ceiling of any channel's own limit
    allowed_models: tuple[str, ...] = ()  # models a channel may use besides the client's default


class ConversationService:
    """Drives turns; the same code serves Slack and the terminal.

    The caller runs one turn of a conversation at a time (bot.conversation.ordering): a turn reads
    the history that the turns before it stored.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        model: ChatModel,
        config: ServiceConfig,
        estimator: TokenEstimator | None = None,
        ledger: Ledger | None = None,
        *,
        tools: ToolBox | None = None,
        approver: Approver | None = None,
        tool_limits: ToolLimits | None = None,
        tool_events: ToolEvents | None = None,
    ) -> None:
        self._sessions = sessions
        self._model = model
        self._config = config
        self._estimator = estimator or TokenEstimator()
        self._ledger = ledger or Ledger(sessions, None)
        self._tools = tools
        limits = tool_limits or ToolLimits()
        self._loop = ToolLoop(sessions, self._ledger, self._estimator, limits, approver, tool_events)
        self._lease = ReplyLease(sessions)
        self.arrivals = Arrivals()  # messages being admitted: replies give way to them
        self._heartbeats: set[asyncio.Task[None]] = set()  # kept referenced until they stop
        self._saved_refs: dict[int, int] = {}  # reply row -> how many of its messages it names

    async def reply(self, turn: Turn, sink: ReplySink, stop: StopHandle | None = None) -> TurnOutcome:
        """Answer `turn` into `sink`; `stop`, when given, lets the chat surface end the answer early.
        Raises HandedOff, having stored nothing and left the sink as it was, when another replica
        adopted the turn meanwhile."""
        began = time.monotonic()
        request_id = f"slackbot-{uuid.uuid4().hex}"
        try:
            refs = tuple(sink.refs)
            conversation_id, assistant_id, history = await self._begin(turn, refs, request_id)
        except UNAVAILABLE as exc:
            log.warning("database unavailable at turn start: %s", error_reason(exc))
            await sink.fail(NOTE_DATABASE)
            _log_end("database", None, began)
            return TurnOutcome(MessageStatus.ERROR, "", None, None, "database")
        except HandedOff:
            # This replica stalled past its lease before storing the reply, and another one adopted
            # the turn: that one answers it (maybe in this sink's placeholder: the caller ends the sink).
            log.warning("a turn was taken over by another replica before its reply was stored")
            _log_end("handed off", None, began)
            raise

        ended = asyncio.Event()
        heartbeat = self._lease.keep(assistant_id, ended)
        task = asyncio.create_task(heartbeat, name=f"lease-{assistant_id}")
        self._heartbeats.add(task)
        task.add_done_callback(self._heartbeats.discard)
        self._saved_refs[assistant_id] = len(refs[:1])  # _begin stores the first message's ts
        try:
            return await self._answer(
                turn, sink, conversation_id, assistant_id, history, request_id, began, stop
            )
        finally:
            ended.set()
            self._saved_refs.pop(assistant_id, None)

    async def _answer(
        self,
        turn: Turn,
        sink: ReplySink,
        conversation_id: int,
        assistant_id: int,
        history: list[ChatMessage],
        request_id: str,
        began: float,
        stop: StopHandle | None,
    ) -> TurnOutcome:
        newest = ChatMessage("user", turn.text)
        plan = plan_turn(turn.channel, self._config.system_prompt, self._bounds())
        prompt = "\n\n".join(part for part in (plan.system_prompt, *turn.context) if part)
        system = ChatMessage("system", prompt) if prompt else None
        try:
            request = fit_to_budget(
                system,
                history,
                newest,
                prompt_budget(self._config.context_window, plan.max_output_tokens),
                self._estimator,
            )
        except MessageTooLong:
            await sink.fail(NOTE_TOO_LONG)
            await self._ledger.reply_ended(
                assistant_id, "", MessageStatus.ERROR, refs=sink.refs, parts=_parts(sink)
            )
            _log_end("too_long", None, began)
            return TurnOutcome(MessageStatus.ERROR, "", conversation_id, None, "too_long")
        if request.dropped_turns:
            log.info("history trimmed", extra={"dropped_turns": request.dropped_turns})

        context = ToolContext(turn.key, turn.user_id, turn.person, turn.channel)
        rounds = await self._loop.run(
            LoopTurn(
                conversation_id,
                assistant_id,
                request_id,
                context,
                prompt_budget(self._config.context_window, plan.max_output_tokens),
                lambda result, label: usage_entry(turn, conversation_id, plan.model, result, label),
                stop,
                turn.budget,
                plan.max_output_tokens,
            ),
            request.messages,
            self._tools.tools_for(context) if self._tools is not None else (),
            sink,
            lambda messages, round_: self._stream(
                messages, sink, assistant_id, round_, plan.model, plan.max_output_tokens, stop
            ),
        )
        end = rounds.end
        result = end.result
        if result.usage.prompt_tokens and rounds.rounds == 1:  # later rounds' prompts were not estimated
            self._estimator.calibrate(request.estimated_tokens, result.usage.prompt_tokens)
        entry = usage_entry(turn, conversation_id, plan.model, result, end.label)
        if end.stopped is not None and result.usage.completion_tokens is None:
            # Stopped mid-stream, the model sent no usage chunk: the tokens were still spent.
            entry = self._estimated(entry, result, request.estimated_tokens)
        status, cancelled = end.status, end.label == "cancelled"
        # The completion was made (and maybe billed): its ledger row is written now, alongside the
        # delivery rather than after it, so no trouble in Slack can lose or delay it.
        written = asyncio.ensure_future(
            self._ledger.completion_ended(
                entry,
                assistant_id,
                result.content,
                refs=sink.refs,
                parts=_parts(sink),
                lease_until=self._lease.until(),
                hold=turn.budget.hand_over() if turn.budget is not None else None,
            )
        )
        try:
            if end.note is None:
                summary = self._summary(result, end.stopped)
                if rounds.rounds > 1:  # the cost of every round, and what was used
                    total = rounds.total
                    summary = replace(
                        summary,
                        prompt_tokens=total.prompt_tokens,
                        completion_tokens=total.completion_tokens,
                        credits_used=total.credits_used,
                        tools_used=rounds.tools_used,
                    )
                await sink.finish(summary)
            else:
                await sink.fail(end.note)
        except asyncio.CancelledError:
            status, cancelled = MessageStatus.INTERRUPTED, True
        except Exception:
            log.exception("the reply could not be delivered")
            status = MessageStatus.ERROR
        finally:
            cancelled = await _despite_cancellation(written) or cancelled
            # Whatever happened to the delivery, store the answer, even while being cancelled.
            ended = self._ledger.reply_ended(
                assistant_id, result.content, status, refs=sink.refs, parts=_parts(sink)
            )
            cancelled = await _despite_cancellation(ended) or cancelled
        # The upstream outcome (complete, cancelled, an error kind), unless delivery changed it.
        _log_end(end.label if status is end.status else status.value, result, began)
        if cancelled:
            raise asyncio.CancelledError  # stored and shown as interrupted; now let shutdown proceed
        # The turn's cost is every round's (metrics and quotas read it); its ledger rows are per round.
        spent = replace(result, usage=rounds.total) if rounds.rounds > 1 else result
        return TurnOutcome(status, result.content, conversation_id, spent, end.label)

    async def _stream(
        self,
        messages: Sequence[ChatMessage],
        sink: ReplySink,
        assistant_id: int,
        round_: RoundRequest,
        model: str,
        max_tokens: int,
        stop: StopHandle | None,
    ) -> _StreamEnd:
        """Stream one completion into the sink; the caller ends the reply with what this returns."""
        stream = self._model.stream_chat(
            messages,
            max_tokens=max_tokens,
            request_id=round_.request_id,
            model=model,
            tools=round_.tools,
            tool_choice=round_.tool_choice,
            parallel_tool_calls=True if round_.tools else None,
        )
        try:
            async with stream:
                pumped = self._pump(stream, sink, assistant_id, round_.shown_before)
                await (pumped if stop is None else unless_stopped(pumped, stop))
        except Stopped as stopped:
            # The stream is closed (the upstream request with it); the answer so far is the answer.
            return _StreamEnd(stream.result(), MessageStatus.COMPLETE, STOPPED, None, stopped.request)
        except LLMError as exc:
            log.warning("upstream error: %s (%s)", exc.kind, exc.status)
            status = MessageStatus.INTERRUPTED if exc.kind == "interrupted" else MessageStatus.ERROR
            return _StreamEnd(stream.result(), status, exc.kind, exc.user_message)
        except asyncio.CancelledError:
            # Finish the Slack message and the stored rows before the cancellation goes on.
            return _StreamEnd(stream.result(), MessageStatus.INTERRUPTED, "cancelled", NOTE_INTERRUPTED)
        return _StreamEnd(stream.result(), MessageStatus.COMPLETE, "complete", None)

    def _bounds(self) -> SettingsBounds:
        default = self._model.model
        models = tuple(dict.fromkeys((default, *self._config.allowed_models)))
        return SettingsBounds(default, models, self._config.max_output_tokens)

    async def _pump(
        self, stream: ChatStreamLike, sink: ReplySink, assistant_id: int, shown_before: str
    ) -> None:
        """Move the model's deltas into the sink until the stream ends."""
        answered = thought = False
        checkpoint_at = time.monotonic() + CHECKPOINT_SECONDS
        waited = 0.0  # giving way to arrivals, over the whole stream: at most GIVE_WAY_PER_REPLY
        async for delta in stream:
            if delta.content:
                if waited < GIVE_WAY_PER_REPLY:
                    waited += await self.arrivals.give_way()
                answered = True
                await sink.append(delta.content)
            elif delta.reasoning and not answered and not thought:
                thought = True
                await sink.thinking()
            # A new message (a placeholder posted while the model thought, the first text without
            # one, a continuation) is saved at once: a replica killed before the next checkpoint
            # would leave it without its note, saying "Thinking…" for good.
            new_message = len(sink.refs) != self._saved_refs.get(assistant_id, 0)
            if new_message or (delta.content and time.monotonic() >= checkpoint_at):
                checkpoint_at = time.monotonic() + CHECKPOINT_SECONDS
                # Earlier tool rounds' text is part of the answer shown: saved with it.
                await self._checkpoint(assistant_id, shown_before + stream.result().content, sink)

    def _estimated(self, entry: UsageEntry, result: CompletionResult, prompt_estimate: int) -> UsageEntry:
        """The entry with the tokens the model did not report estimated, and marked as estimated.
        Credits stay unknown (NULL): a guess at money would read as a bill."""
        estimate = self._estimator.estimate_text
        reasoning = estimate(result.reasoning) if result.reasoning else entry.reasoning_tokens
        return replace(
            entry,
            prompt_tokens=entry.prompt_tokens if entry.prompt_tokens is not None else prompt_estimate,
            completion_tokens=estimate(result.content + result.reasoning),
            reasoning_tokens=entry.reasoning_tokens if entry.reasoning_tokens is not None else reasoning,
            tokens_estimated=True,
        )

    def _summary(self, result: CompletionResult, stopped: StopRequest | None = None) -> ReplySummary:
        note: str | None = None
        if stopped is not None:
            note = f"{NOTE_STOPPED_BY} {stopped.by_name}"
        elif not result.content.strip():
            note = NOTE_ONLY_REASONING if result.finish_reason == "length" else NOTE_EMPTY
        elif result.finish_reason == "length":
            note = NOTE_CUT_OFF
        return ReplySummary(
            model=result.model,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            credits_used=result.usage.credits_used,
            finish_reason=result.finish_reason,
            note=note,
        )

    async def _begin(
        self, turn: Turn, refs: Sequence[str], request_id: str
    ) -> tuple[int, int, list[ChatMessage]]:
        """Store the user message and a `streaming` assistant row under lease; return the prior history."""
        async with self._sessions.begin() as session:
            if turn.place is not None:
                await turn.place.begin_reply(session)  # first: a turn taken over stores nothing
            stored: Sequence[Message] = ()
            if turn.opened is not None:
                conversation = turn.opened
            else:
                conversation = await repo.conversation_id(session, turn.key, turn.kind)
                stored = await repo.load_history(session, conversation)
            if not stored and turn.backfill:
                for earlier in turn.backfill:
                    role, content = Role(earlier.role), earlier.content
                    await repo.add_message(session, conversation, role, content, touch=False)
                stored = await repo.load_history(session, conversation)
            history = [
                chat
                for m in stored
                if _usable(m)
                for chat in replay(m.role.value, m.content, m.tool_exchange)
            ]
            # The reply's row, added next, marks the conversation updated: one statement less.
            await repo.add_message(
                session, conversation, Role.USER, turn.text, user_id=turn.user_id, touch=False
            )
            assistant_id = await repo.add_message(
                session,
                conversation,
                Role.ASSISTANT,
                "",
                status=MessageStatus.STREAMING,
                slack_ts=refs[0] if refs else None,
                request_id=request_id,
                lease_until=self._lease.until(),
            )
            return conversation, assistant_id, history

    async def _checkpoint(self, message_id: int, content: str, sink: ReplySink) -> None:
        """Save the partial answer now and then (recovery finishes it after a crash), renewing the
        lease in the same write so the hot path makes no extra one."""
        self._saved_refs[message_id] = len(sink.refs)  # tried once per new message, even if it fails
        try:
            async with self._sessions.begin() as session:
                await repo.checkpoint_message(
                    session,
                    message_id,
                    content=content,
                    slack_refs=sink.refs,
                    slack_parts=_parts(sink),
                    lease_until=self._lease.until(),
                )
            self._lease.note(message_id)
        except UNAVAILABLE as exc:
            log.warning("could not checkpoint a streaming reply: %s", error_reason(exc))


async def _despite_cancellation(write: Awaitable[None]) -> bool:
    """Run a store to its end even if the turn is cancelled meanwhile; True when it was."""
    task = asyncio.ensure_future(write)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        return True
    return False


def _parts(sink: ReplySink) -> list[dict[str, object]]:
    return [{"ts": p.ref, "start": p.start, "reopen": p.reopen, "limit": p.limit} for p in sink.parts]


def _log_end(outcome: str, result: CompletionResult | None, began: float) -> None:
    """The one line every reply ends with: how it went and what it cost, never its text."""
    usage = result.usage if result is not None else None
    log.info(
        "reply ended",
        extra={
            "outcome": outcome,
            "ttft_ms": result.ttft_ms if result is not None else None,
            "duration_ms": round((time.monotonic() - began) * 1000),
            "prompt_tokens": usage.prompt_tokens if usage is not None else None,
            "completion_tokens": usage.completion_tokens if usage is not None else None,
            "credits_used": usage.credits_used if usage is not None else None,
            "inference_id": result.inference_id if result is not None else None,
        },
    )


def usage_entry(
    turn: Turn, conversation_id: int, model: str, result: CompletionResult, label: str
) -> UsageEntry:
    where = (turn.key.team_id, turn.key.channel_id, turn.user_id)
    return completion_entry(where, conversation_id, model, result, label)


def _usable(message: Message) -> bool:
    """History sent upstream: person messages and answers that have text or tool rounds (partial
    ones included).

    An answer still `streaming` here belongs to a turn that can no longer be running: a thread's turns
    run one at a time, so its replica died (or lost the database) before ending it. Its text so far is
    what people see, with the interruption note recovery adds, possibly only after this turn starts:
    it is history as an interrupted answer would be."""
    return bool(message.content) or (message.role == Role.ASSISTANT and bool(message.tool_exchange))
