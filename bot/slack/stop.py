"""Stopping a streaming answer from Slack: the Stop button on an edited message, and the agent
session's own stop control (`agent_session_stopped`).

`RunningTurns` knows which running turn shows which Slack messages (every message of a reply,
continuations and native streams included) and which thread it answers in. `StopControl` decides
whether the person pressing may stop it (the asker, a bot admin, a workspace admin or owner) and
then trips the turn's `StopHandle`; the conversation service does the rest. With replicas, a press
for an answer streaming elsewhere goes through the `StopRelay` (bot.slack.stop_relay) to the replica
that streams it, which applies it here as if pressed there.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_sdk.web.async_client import AsyncWebClient

from bot.conversation.admission import Arrival
from bot.conversation.person import Person
from bot.conversation.ports import ReplySink
from bot.conversation.stop import StopHandle, StopRequest
from bot.slack.agent_sessions import AgentSessions
from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason
from bot.slack.people import UserDirectory
from bot.slack.renderer import STOP_ACTION
from bot.slack.stop_relay import StopAsked, StopRelay

log = logging.getLogger(__name__)

SESSION_CLOSE_WAIT = 5.0  # seconds shutdown waits for the sessions' last `active` calls


@dataclass(eq=False)
class RunningTurn:
    """A turn whose answer is streaming into `sink` in one Slack thread."""

    team_id: str
    channel: str
    thread_ts: str
    reply_id: str  # the question's ts: the Stop button's value
    asker_id: str | None
    sink: ReplySink
    handle: StopHandle
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def shows(self, ts: str) -> bool:
        return ts in self.sink.refs


class RunningTurns:
    """The turns of this process that are streaming now, found by channel and message or thread;
    the domain's `RunningReplies` (bot.conversation.turns) tells it when each starts and ends.

    With `sessions`, each turn's agent session is `processing` while it runs (Slack shows its stop
    control then) and `active` after; those calls run beside the turn and never delay the answer.
    """

    def __init__(self, client: AsyncWebClient, sessions: AgentSessions | None = None) -> None:
        self.client = client
        self.sessions = sessions
        self._by_channel: dict[str, list[RunningTurn]] = defaultdict(list)
        self._by_handle: dict[StopHandle, RunningTurn] = {}
        self._lifecycles: set[asyncio.Task[None]] = set()  # referenced until they end

    def started(self, arrival: Arrival, reply: ReplySink, stop: StopHandle) -> None:
        key = arrival.key
        turn = RunningTurn(
            key.team_id, key.channel_id, key.thread_ts, arrival.message_ts, arrival.user_id, reply, stop
        )
        self._by_channel[turn.channel].append(turn)
        self._by_handle[stop] = turn
        if self.sessions is not None:
            task = asyncio.create_task(self._session(self.sessions, turn), name="agent-session")
            self._lifecycles.add(task)
            task.add_done_callback(self._lifecycles.discard)

    def ended(self, stop: StopHandle) -> None:
        turn = self._by_handle.pop(stop, None)
        if turn is None:
            return
        turns = self._by_channel.get(turn.channel)
        if turns is not None and turn in turns:
            turns.remove(turn)
            if not turns:
                del self._by_channel[turn.channel]
        turn.ended.set()

    async def aclose(self) -> None:
        """At shutdown, after the turns ended: let their sessions' last calls finish, briefly."""
        if self._lifecycles:
            await asyncio.wait(set(self._lifecycles), timeout=SESSION_CLOSE_WAIT)

    def showing(self, channel: str, ts: str) -> RunningTurn | None:
        """The turn one of whose messages is `ts` (a reply's refs grow as it continues)."""
        return next((t for t in self._by_channel.get(channel, ()) if t.shows(ts)), None)

    def answering(self, channel: str, reply_id: str) -> RunningTurn | None:
        return next((t for t in self._by_channel.get(channel, ()) if t.reply_id == reply_id), None)

    def in_thread(self, channel: str, thread_ts: str) -> list[RunningTurn]:
        return [t for t in self._by_channel.get(channel, ()) if t.thread_ts == thread_ts]

    async def _session(self, sessions: AgentSessions, turn: RunningTurn) -> None:
        where = (turn.team_id, turn.channel, turn.thread_ts)
        opened = await sessions.open(self.client, *where)
        await turn.ended.wait()
        if opened:  # a session this turn did not open is not this turn's to move
            await sessions.close(self.client, *where)


class StopControl:
    """Bolt listeners for the two stop controls; register with `register_stop_controls`."""

    def __init__(
        self,
        turns: RunningTurns,
        people: UserDirectory,
        admins: frozenset[str],
        relay: StopRelay | None = None,
    ) -> None:
        self._turns = turns
        self._people = people
        self._admins = admins
        self._sessions = turns.sessions
        self._relay = relay
        if relay is not None:
            relay.on_forwarded(self.on_forwarded)

    async def on_button(self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        """A press of the Stop button (`block_actions`): ack at once, then stop if allowed."""
        await ack()
        channel = _text(body.get("channel"), "id")
        user_id = _text(body.get("user"), "id")
        team_id = _text(body.get("team"), "id") or _text(body.get("user"), "team_id")
        if not channel or not user_id:
            return
        actions = body.get("actions")
        asked = StopAsked(
            team_id,
            channel,
            user_id,
            message_ts=_text(body.get("container"), "message_ts"),
            reply_id=_text(actions[0], "value") if isinstance(actions, list) and actions else "",
        )
        turns = self._pressed(asked)
        if not turns and self._relay is not None:
            await self._relay.forward(asked)  # streaming on another replica, maybe
            return
        if not turns:
            # The answer ended meanwhile (its final edit removes the button): nothing to stop.
            log.info("stop pressed on an answer that is no longer streaming")
            return
        await self._stop(turns[0], user_id, team_id or turns[0].team_id, client)

    async def on_session_stopped(self, body: dict[str, Any], client: AsyncWebClient) -> None:
        """`agent_session_stopped`: stop the streams Slack names, else the thread's running turn, then
        move the session out of `processing` (Slack leaves that to the app)."""
        event = body.get("event") or {}
        channel, thread_ts = str(event.get("channel") or ""), str(event.get("thread_ts") or "")
        user_id = str(event.get("user") or "")
        team_id = str(body.get("team_id") or "")
        if not channel or not user_id:
            return
        streams = event.get("streaming_message_ts") or []
        stopped_ts = tuple(str(ts) for ts in streams) if isinstance(streams, list) else ()
        asked = StopAsked(team_id, channel, user_id, thread_ts=thread_ts, streams=stopped_ts)
        turns = self._pressed(asked)
        for turn in turns:
            # A turn moves its own session to `active` when it ends (`RunningTurns`); a refused stop
            # leaves the answer, and the session's `processing`, going on.
            await self._stop(turn, user_id, team_id or turn.team_id, client)
        if turns or not thread_ts:
            return
        if self._relay is not None:
            await self._relay.forward(asked)
            if await self._relay.thread_busy(team_id, channel, thread_ts):
                return  # the replica answering there moves the session when its turn ends
        # Nothing runs (any more): Slack leaves moving the session out of `processing` to us.
        if self._sessions is not None:
            await self._sessions.close(client, team_id, channel, thread_ts)

    async def on_forwarded(self, asked: StopAsked) -> None:
        """A press another replica received: applied here when the answer streams here."""
        for turn in self._pressed(asked):
            await self._stop(turn, asked.user_id, asked.team_id or turn.team_id, self._turns.client)

    def _pressed(self, asked: StopAsked) -> list[RunningTurn]:
        """The turns of this process a press means: by the message pressed (any of the reply's), by
        the button's value, by the streams Slack names, else by the thread (the agent session)."""
        found = self._turns.showing(asked.channel, asked.message_ts) if asked.message_ts else None
        if found is None and asked.reply_id:
            found = self._turns.answering(asked.channel, asked.reply_id)
        if found is not None:
            return [found]
        by_stream = (self._turns.showing(asked.channel, ts) for ts in asked.streams)
        turns = list(dict.fromkeys(t for t in by_stream if t is not None))
        if not turns and asked.thread_ts and not asked.message_ts:
            turns = self._turns.in_thread(asked.channel, asked.thread_ts)
        return turns

    async def _stop(self, turn: RunningTurn, user_id: str, team_id: str, client: AsyncWebClient) -> bool:
        """Stop `turn` for `user_id` if they may; otherwise tell them, privately, who may."""
        person = await self._person(user_id, team_id)
        if user_id == turn.asker_id or person.is_admin:
            if turn.handle.stop(StopRequest(by_name=person.name or user_id)):
                log.info("answer stopped", extra={"by_admin": user_id != turn.asker_id})
            return True
        asker = await self._person(turn.asker_id, team_id) if turn.asker_id else None
        who = asker.name if asker is not None and asker.name else "the person who asked"
        await _tell(client, turn, user_id, f"Only {who} or an admin can stop this answer.")
        return False

    async def _person(self, user_id: str, workspace: str) -> Person:
        profile = await self._people.lookup(user_id)
        if profile is None:  # Slack cannot say now: only the bot's own admin list counts
            return Person(user_id=user_id, is_admin=user_id in self._admins)
        return profile.asker(admins=self._admins, workspace=workspace)


def register_stop_controls(app: AsyncApp, control: StopControl) -> None:
    """Register before any catch-all event listener: Bolt runs only the first one that matches."""
    app.action(STOP_ACTION)(control.on_button)
    app.event("agent_session_stopped")(control.on_session_stopped)


async def _tell(client: AsyncWebClient, turn: RunningTurn, user_id: str, text: str) -> None:
    try:
        await client.chat_postEphemeral(
            channel=turn.channel, user=user_id, thread_ts=turn.thread_ts, text=text
        )
    except SLACK_CALL_ERRORS as exc:
        log.info("could not tell a person why they cannot stop an answer (%s)", call_error_reason(exc))


def _text(obj: Any, key: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    return str(value) if value else ""
