"""A fake Slack Web API on loopback that keeps state and enforces Slack's limits, for tests and benchmarks.

Point a real `AsyncWebClient(base_url=fake.api_url, token=...)` at it and assert on what it received,
in the spirit of bolt-python's `tests/mock_web_api_server`, but async (aiohttp) and stateful:
messages are stored, edited and listed.

By default it behaves like Slack (see `slack_rules`): every call takes a few tens of milliseconds
(`latency`), each method has its rate limit per workspace (`limits`; over it: HTTP 429 with
`Retry-After`, only that method in that workspace blocked), conversations.replies pages hold at most
15 messages, Block Kit rules are checked, and channels in `not_joined` answer `not_in_channel`.
Tests ask for more trouble with `fail_next` (scripted errors) and `fault` (5xx answers and dropped
connections, by count or seeded probability), or relax the defaults (`limits`, `latency = None`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.slack_rules import (
    MAX_SUGGESTED_PROMPTS,
    POST_TEXT_LIMIT,
    REPLIES_PAGE_LIMIT,
    SESSION_STATUSES,
    SESSION_TITLE_LIMIT,
    SLACK_LIMITS,
    STREAM_EXPIRY,
    STREAM_TOTAL_LIMIT,
    UPDATE_TEXT_LIMIT,
    Buckets,
    Fault,
    FaultKind,
    RateLimit,
    Refusal,
    SeededLatency,
    check_recipients,
    message_content,
    slack_file_ids,
    stream_text,
    validate_blocks,
    validate_view,
)

__all__ = [
    "Call",
    "FakeEphemeral",
    "FakeFile",
    "FakeMessage",
    "FakeSlackApi",
    "FakeUpload",
    "FakeUser",
    "RateLimit",
    "reject",
]

JsonDict = dict[str, Any]
_Reject = Refusal  # the name this module's handlers raise


@dataclass
class FakeUpload:
    """A file the bot uploaded with files_upload_v2: URL asked for, bytes posted, then shared."""

    id: str
    filename: str
    length: int
    alt_txt: str | None
    content: bytes | None = None  # None until posted to the upload URL
    title: str | None = None
    channel: str | None = None  # set by files.completeUploadExternal
    thread_ts: str | None = None
    initial_comment: str | None = None
    completed_at: float | None = None  # time.monotonic() of files.completeUploadExternal


@dataclass
class FakeMessage:
    ts: str
    channel: str
    thread_ts: str | None
    text: str
    blocks: list[JsonDict] | None
    user: str | None
    bot_id: str | None
    edits: int = 0
    history: list[str] = field(default_factory=list)  # every text the message has shown, oldest first
    streaming: bool = False  # a native stream still open (people see it as still being written)
    tasks: list[JsonDict] = field(default_factory=list)  # task_update chunks streamed, in order
    stream_started: float = 0.0  # time.monotonic() of chat.startStream

    @property
    def markdown(self) -> str:
        """The text of the message's `markdown` blocks, joined (the answer part of a bot reply)."""
        return "".join(b.get("text", "") for b in self.blocks or [] if b.get("type") == "markdown")

    @property
    def context(self) -> str:
        """The text of the message's `context` blocks (metadata and notes), joined by newlines."""
        return "\n".join(
            element.get("text", "")
            for b in self.blocks or []
            if b.get("type") == "context"
            for element in b.get("elements", [])
        )

    def as_api(self) -> JsonDict:
        out: JsonDict = {"type": "message", "ts": self.ts, "text": self.text}
        if self.user is not None:
            out["user"] = self.user
        if self.bot_id is not None:
            out["bot_id"] = self.bot_id
        if self.thread_ts is not None:
            out["thread_ts"] = self.thread_ts
        if self.blocks:
            out["blocks"] = self.blocks
        if self.edits:
            out["edited"] = {"user": self.user, "ts": self.ts}
        return out


@dataclass(frozen=True)
class FakeUser:
    real_name: str
    display_name: str = ""
    is_bot: bool = False
    tz: str = "UTC"
    is_admin: bool = False
    is_owner: bool = False
    is_restricted: bool = False  # a multi-channel guest
    is_ultra_restricted: bool = False  # a single-channel guest
    team_id: str | None = None  # another workspace's id for a Slack Connect user; None: the caller's


@dataclass
class FakeFile:
    """A file someone uploaded; `as_event()` is the object Slack puts in a message event's `files`."""

    id: str
    name: str
    content: bytes
    mimetype: str
    filetype: str
    url: str
    size: int | None = None  # what Slack reports; None: the content's length
    fail_with: int | None = None  # an HTTP status the download answers instead of the bytes
    redirect_to: str | None = None  # the download answers 302 to this location instead
    downloads: int = 0

    def as_event(self) -> JsonDict:
        return {
            "id": self.id,
            "created": 1_700_000_000,
            "name": self.name,
            "title": self.name,
            "mimetype": self.mimetype,
            "filetype": self.filetype,
            "pretty_type": self.filetype.upper(),
            "user": "U1",
            "mode": "hosted",
            "is_external": False,
            "is_public": False,
            "size": len(self.content) if self.size is None else self.size,
            "url_private": self.url,
            "url_private_download": self.url + "?download=1",
            "permalink": f"https://fake.slack.com/files/U1/{self.id}/{self.name}",
        }


@dataclass(frozen=True)
class FakeEphemeral:
    channel: str
    user: str
    text: str
    blocks: list[JsonDict] | None
    thread_ts: str | None


@dataclass(frozen=True)
class Call:
    """One request the fake received (accepted or rejected).

    `time` is `time.monotonic()` when the fake acted on it, after its latency: when an edit became
    visible. A dropped connection has status 0 and error "connection_reset".
    """

    method: str
    params: JsonDict
    team: str | None
    time: float
    status: int = 200
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass
class _Failure:
    error: str
    status: int
    retry_after: int | None


class _Dropped(Exception):
    """A fault: drop the connection without an answer."""


class _ServerError(Exception):
    """A fault: a 5xx answer with an HTML body, as Slack's edge sends when something is down."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


Handler = Callable[[JsonDict, str], Awaitable[JsonDict]]
_AiohttpHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeSlackApi:
    """Slack's Web API for one or more workspaces, in memory. See the module docstring."""

    def __init__(
        self,
        bot_token: str = "xoxb-test",
        team_id: str = "T1",
        bot_user_id: str = "UBOT",
        bot_id: str = "BBOT",
    ) -> None:
        self.bot_user_id, self.bot_id, self.team_id = bot_user_id, bot_id, team_id
        self.tokens: dict[str, str] = {bot_token: team_id}  # token -> team_id
        # Slack's limits per method; replace or delete entries for a test that needs others.
        self.limits: dict[str, RateLimit] = dict(SLACK_LIMITS)
        self.known_channels: set[str] | None = None  # None: every channel exists
        self.not_joined: set[str] = set()  # channels the bot is not a member of: not_in_channel
        self.users: dict[str, FakeUser] = {bot_user_id: FakeUser(real_name="GLM", is_bot=True)}
        # method -> seconds before the fake acts on a call and answers; None: no delay at all
        self.latency: Callable[[str], float] | None = SeededLatency()
        self.calls: list[Call] = []
        self.ephemerals: list[FakeEphemeral] = []
        self.uploads: dict[str, FakeUpload] = {}  # the bot's files_upload_v2 uploads, by file id
        # Seconds Slack takes to process an upload before blocks may show it (slackapi/python-slack-sdk
        # #1521): a view showing it earlier, like one showing a file the app never uploaded, is refused.
        self.file_processing = 0.0
        self.statuses: list[
            tuple[str, str, str]
        ] = []  # assistant.threads.setStatus (channel, thread, status)
        # The status line each thread shows now: set by setStatus, cleared when the app posts there.
        self.status_now: dict[tuple[str, str], str] = {}
        self.stream_expiry = STREAM_EXPIRY  # seconds before a stream dies (message_not_in_streaming_state)
        # Slack refuses native streams outside DMs for some apps: channel_type_not_supported.
        self.refuse_streams_in_channels = False
        # assistant.threads.setSuggestedPrompts: channel -> (title, [(title, message)]); the last set
        self.suggested_prompts: dict[str, tuple[str | None, list[tuple[str, str]]]] = {}
        self.titles: dict[tuple[str, str], str] = {}  # assistant.threads.setTitle (channel, thread)
        # conversations.info: each channel's creator (unknown channels: created by U0CREATOR) and name
        # (unknown channels: the id in lower case); a private channel in `not_joined` is not found.
        self.channel_creators: dict[str, str] = {}
        self.channel_names: dict[str, str] = {}
        # Who is in which conversation (conversations.members; unset: just U1 and the bot), which
        # C channels are private (G and D ones always are), and whose DM with the bot a D channel is.
        self.channel_members: dict[str, list[str]] = {}
        self.private_channels: set[str] = set()
        self.dm_users: dict[str, str] = {}
        self.files: dict[str, FakeFile] = {}  # uploaded files, served at their url with the bot token
        self._next_file = 1
        self.expired_triggers: set[str] = set()  # views.open answers expired_trigger_id for these
        self.opened_views: list[JsonDict] = []  # views.open, oldest first, with the "id" the fake gave
        self.home_views: dict[str, JsonDict] = {}  # views.publish: user -> their Home tab now
        self._views: dict[str, JsonDict] = {}  # view id -> the view (opened or published)
        self._next_view = 1
        # agents.sessions.setStatus (channel, thread, status); agents.sessions.rename (channel, thread, title)
        self.session_statuses: list[tuple[str, str, str]] = []
        self.session_titles: list[tuple[str, str, str]] = []
        self._messages: dict[str, list[FakeMessage]] = defaultdict(list)
        self._failures: dict[str, deque[_Failure]] = defaultdict(deque)
        self._faults: dict[str, list[Fault]] = defaultdict(list)
        self._buckets = Buckets()
        self._in_flight = 0
        self._last_activity = time.monotonic()
        self._next_ts = 1_700_000_000_000_100  # microseconds; ts strings increase like Slack's
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._method_tokens: dict[str, dict[str, str]] = {}  # method -> its own tokens (see `route`)
        self._handlers: dict[str, Handler] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.delete": self._delete,
            "chat.postEphemeral": self._post_ephemeral,
            "conversations.replies": self._replies,
            "conversations.history": self._history,
            "conversations.members": self._members,
            "conversations.list": self._list,
            "files.info": self._files_info,
            "users.info": self._users_info,
            "assistant.threads.setStatus": self._set_status,
            "files.getUploadURLExternal": self._get_upload_url,
            "files.completeUploadExternal": self._complete_upload,
            "assistant.threads.setSuggestedPrompts": self._set_suggested_prompts,
            "assistant.threads.setTitle": self._set_title,
            "chat.startStream": self._start_stream,
            "chat.appendStream": self._append_stream,
            "chat.stopStream": self._stop_stream,
            "conversations.info": self._conversations_info,
            "views.open": self._views_open,
            "views.publish": self._views_publish,
            "views.update": self._views_update,
            "agents.sessions.setStatus": self._session_status,
            "agents.sessions.rename": self._session_rename,
        }

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._track])
        app.router.add_route("*", "/api/{method}", self._dispatch)
        app.router.add_post("/upload/v1/{file_id}", self._receive_upload)
        app.router.add_get("/files-pri/{file_id}/{name}", self._download)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeSlackApi:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/api/"

    # ---- scripting and inspection --------------------------------------------------------------

    def route(
        self, method: str, handler: Handler, *, tokens: Mapping[str, str] | None = None
    ) -> Handler | None:
        """Serve another method: `async handler(params, team_id) -> fields`; raise `reject(...)` to fail.

        Returns the handler it replaces, so a test can wrap the fake's own (e.g. to delay one call).

        `tokens` (token -> team_id) makes the method accept only those tokens instead of the bot tokens,
        as Slack does for app-level `xapp-` tokens (`apps.connections.open`); a token the fake knows
        for other methods gets `not_allowed_token_type`, an unknown one `invalid_auth`.
        """
        previous, self._handlers[method] = self._handlers.get(method), handler
        if tokens is not None:
            self._method_tokens[method] = dict(tokens)
        return previous

    def set_clock(self, unix_seconds: float) -> None:
        """Give the next messages ts from this Unix time on (by default they start in November 2023),
        for tests where a message's ts must be the real time it was posted, as in Slack."""
        self._next_ts = max(self._next_ts, int(unix_seconds * 1_000_000))

    def add_token(self, token: str, team_id: str) -> None:
        """Accept another bot token, for another workspace."""
        self.tokens[token] = team_id

    def fail_next(
        self,
        method: str,
        *,
        error: str = "internal_error",
        status: int = 200,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` authenticated calls of `method` with this error (429 sends Retry-After)."""
        if status == 429 and retry_after is None:
            retry_after = 1
        self._failures[method].extend(_Failure(error, status, retry_after) for _ in range(times))

    def fault(
        self,
        method: str,
        kind: FaultKind,
        *,
        times: int | None = None,
        probability: float | None = None,
        seed: int = 0,
        status: int = 503,
    ) -> None:
        """Trouble for `method`: "server_error" answers `status` (an HTML body, as Slack's edge sends),
        "reset" drops the connection without an answer; the call is not carried out either way.
        Either the next `times` calls, or each call with `probability` from a generator seeded `seed`.
        """
        self._faults[method].append(
            Fault(kind, times=times, probability=probability, seed=seed, status=status)
        )

    def add_message(
        self,
        channel: str,
        text: str,
        user: str | None = "U1",
        thread_ts: str | None = None,
        *,
        bot_id: str | None = None,
    ) -> str:
        """Seed a message (a person's, by default) and return its ts."""
        return self._store(channel, text, None, user, bot_id, thread_ts).ts

    def add_file(
        self,
        name: str,
        content: bytes,
        *,
        mimetype: str = "text/plain",
        filetype: str = "text",
        size: int | None = None,
        fail_with: int | None = None,
    ) -> FakeFile:
        """Upload a file; put `file.as_event()` into a message event's `files` to attach it."""
        file_id = f"F{self._next_file:08d}"
        self._next_file += 1
        url = f"http://127.0.0.1:{self._port}/files-pri/{self.team_id}-{file_id}/{name}"
        found = FakeFile(file_id, name, content, mimetype, filetype, url, size, fail_with)
        self.files[file_id] = found
        return found

    def stamp_from(self, epoch_seconds: float) -> None:
        """Give the next messages ts from this time on (the default is November 2023), e.g. `time.time()`
        for tests that read "the last 24 hours"."""
        self._next_ts = max(self._next_ts, int(epoch_seconds * 1_000_000))

    def delete_message(self, channel: str, ts: str) -> None:
        """Remove a message, as a person deleting it in Slack would."""
        self._messages[channel] = [m for m in self._messages.get(channel, []) if m.ts != ts]

    def messages(self, channel: str) -> list[FakeMessage]:
        return list(self._messages.get(channel, []))

    def message(self, channel: str, ts: str) -> FakeMessage:
        found = self._find(channel, ts)
        if found is None:
            raise KeyError(f"no message {ts} in {channel}")
        return found

    def thread(self, channel: str, thread_ts: str) -> list[FakeMessage]:
        """The thread's root and replies, oldest first."""
        return [m for m in self._messages.get(channel, []) if thread_ts in (m.ts, m.thread_ts)]

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def most_in_a_minute(self, method: str) -> int:
        """The most calls of `method` Slack accepted in any 60 s window (across workspaces)."""
        times = sorted(c.time for c in self.calls if c.method == method and c.ok)
        most, first = 0, 0
        for last, t in enumerate(times):
            while t - times[first] >= 60.0:
                first += 1
            most = max(most, last - first + 1)
        return most

    def status(self, channel: str, thread_ts: str) -> str:
        """The status line the thread shows now ("" when none)."""
        return self.status_now.get((channel, thread_ts), "")

    @property
    def count_429s(self) -> int:
        return sum(1 for c in self.calls if c.status == 429)

    @property
    def idle_since(self) -> float | None:
        """`time.monotonic()` of the last request's end, or None while one is being handled."""
        return None if self._in_flight else self._last_activity

    # ---- HTTP ----------------------------------------------------------------------------------

    @web.middleware
    async def _track(self, request: web.Request, handler: _AiohttpHandler) -> web.StreamResponse:
        """Count requests in flight, latency included, for `idle_since`."""
        self._in_flight += 1
        try:
            return await handler(request)
        finally:
            self._in_flight -= 1
            self._last_activity = time.monotonic()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        if self.latency is not None:
            await asyncio.sleep(self.latency(method))
        params = await _read_params(request)
        arrived = time.monotonic()
        token = _bearer(request.headers.get("Authorization")) or params.pop("token", None)
        team = self._method_tokens.get(method, self.tokens).get(token) if token else None
        try:
            if not token:
                raise _Reject("not_authed")
            if team is None:
                raise _Reject("not_allowed_token_type" if self._known_token(token) else "invalid_auth")
            handler = self._handlers.get(method)
            if handler is None:
                raise _Reject("unknown_method")
            self._check_scripted(method)
            self._check_faults(method)
            self._check_rate(method, team, params)
            body = await handler(params, team)
        except _Dropped:
            self.calls.append(Call(method, params, team, arrived, 0, "connection_reset"))
            assert request.transport is not None
            request.transport.abort()
            return web.Response()  # never sent: the connection is gone
        except _ServerError as e:
            self.calls.append(Call(method, params, team, arrived, e.status, "server_error"))
            page = f"<html><body><h1>{e.status}</h1>Slack is having trouble.</body></html>"
            return web.Response(text=page, status=e.status, content_type="text/html")
        except _Reject as r:
            self.calls.append(Call(method, params, team, arrived, r.status, r.error))
            headers = {"Retry-After": str(r.retry_after)} if r.retry_after is not None else None
            return web.json_response({"ok": False, "error": r.error}, status=r.status, headers=headers)
        self.calls.append(Call(method, params, team, arrived))
        return web.json_response({"ok": True, **body})

    def _known_token(self, token: str) -> bool:
        return token in self.tokens or any(token in t for t in self._method_tokens.values())

    def _check_scripted(self, method: str) -> None:
        queue = self._failures.get(method)
        if queue:
            f = queue.popleft()
            raise _Reject(f.error, f.status, f.retry_after)

    def _check_faults(self, method: str) -> None:
        for fault in self._faults.get(method, ()):
            if fault.fires():
                if fault.kind == "reset":
                    raise _Dropped
                raise _ServerError(fault.status)

    def _check_rate(self, method: str, team: str, params: JsonDict) -> None:
        limit = self.limits.get(method)
        if limit is None:
            return
        key: tuple[str, ...] = (method, team)
        if limit.per == "channel":
            key += (str(params.get("channel") or params.get("channel_id") or ""),)
        self._buckets.take(key, limit, time.monotonic())

    # ---- state ---------------------------------------------------------------------------------

    def _allocate_ts(self) -> str:
        value, self._next_ts = self._next_ts, self._next_ts + 100
        return f"{value // 1_000_000}.{value % 1_000_000:06d}"

    def _store(
        self,
        channel: str,
        text: str,
        blocks: list[JsonDict] | None,
        user: str | None,
        bot_id: str | None,
        thread_ts: str | None,
    ) -> FakeMessage:
        msg = FakeMessage(self._allocate_ts(), channel, thread_ts, text, blocks, user, bot_id)
        msg.history.append(text)
        if thread_ts is not None:
            root = self._find(channel, thread_ts)
            if root is not None and root.thread_ts is None:
                root.thread_ts = root.ts  # Slack marks a root with replies this way
        self._messages[channel].append(msg)
        return msg

    def _find(self, channel: str, ts: str) -> FakeMessage | None:
        return next((m for m in self._messages.get(channel, []) if m.ts == ts), None)

    def _channel(self, params: JsonDict, name: str = "channel", *, member: bool = False) -> str:
        """The call's channel; `member`: the bot must have joined it, as for posting and reading."""
        channel = params.get(name)
        if not channel or (self.known_channels is not None and channel not in self.known_channels):
            raise _Reject("channel_not_found")
        if member and channel in self.not_joined:
            raise _Reject("not_in_channel")
        return str(channel)

    # ---- methods -------------------------------------------------------------------------------

    async def _auth_test(self, _params: JsonDict, team: str) -> JsonDict:
        return {
            "url": "https://fake.slack.com/",
            "team": "Fake",
            "user": "glm",
            "team_id": team,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
        }

    async def _post_message(self, params: JsonDict, _team: str) -> JsonDict:
        channel = self._channel(params, member=True)
        text, blocks = message_content(params)
        thread_ts = params.get("thread_ts") or None
        msg = self._store(channel, text[:POST_TEXT_LIMIT], blocks, self.bot_user_id, self.bot_id, thread_ts)
        self._app_posted(channel, thread_ts)
        return {"channel": channel, "ts": msg.ts, "message": msg.as_api()}

    def _app_posted(self, channel: str, thread_ts: str | None) -> None:
        """Slack clears a thread's status line when the app posts in it."""
        if thread_ts is not None:
            self.status_now.pop((channel, thread_ts), None)

    async def _start_stream(self, params: JsonDict, _team: str) -> JsonDict:
        channel = self._channel(params, member=True)
        thread_ts = params.get("thread_ts")
        if not thread_ts:
            raise _Reject("invalid_arguments")  # streams always reply in a thread
        if self.refuse_streams_in_channels and not channel.startswith("D"):
            raise _Reject("channel_type_not_supported")
        check_recipients(params, channel)
        text = stream_text(params)
        msg = self._store(channel, text, _streamed(text), self.bot_user_id, self.bot_id, str(thread_ts))
        msg.streaming, msg.stream_started = True, time.monotonic()
        self._app_posted(channel, str(thread_ts))
        return {"channel": channel, "ts": msg.ts}

    def _open_stream(self, params: JsonDict) -> FakeMessage:
        channel = self._channel(params, member=True)
        msg = self._find(channel, str(params.get("ts", "")))
        if msg is None:
            raise _Reject("message_not_found")
        if not msg.streaming or time.monotonic() - msg.stream_started > self.stream_expiry:
            raise _Reject("message_not_in_streaming_state")
        return msg

    def _stream_more(self, msg: FakeMessage, params: JsonDict) -> None:
        text = msg.text + stream_text(params)
        if len(text) > STREAM_TOTAL_LIMIT:
            raise _Reject("msg_too_long")
        msg.text, msg.blocks = text, _streamed(text)
        msg.history.append(text)
        msg.tasks += [c for c in params.get("chunks") or [] if c.get("type") == "task_update"]

    async def _append_stream(self, params: JsonDict, _team: str) -> JsonDict:
        msg = self._open_stream(params)
        self._stream_more(msg, params)
        return {"channel": msg.channel, "ts": msg.ts}

    async def _stop_stream(self, params: JsonDict, _team: str) -> JsonDict:
        msg = self._open_stream(params)
        blocks = params.get("blocks")
        if blocks is not None:
            validate_blocks(blocks)
        self._stream_more(msg, params)
        # What people see once it stops: the streamed Markdown, then the blocks given at the stop.
        msg.blocks = [*(_streamed(msg.text) or []), *(blocks or [])] or None
        msg.streaming = False
        return {"channel": msg.channel, "ts": msg.ts, "message": msg.as_api()}

    async def _update(self, params: JsonDict, _team: str) -> JsonDict:
        channel = self._channel(params, member=True)
        msg = self._find(channel, str(params.get("ts", "")))
        if msg is None:
            raise _Reject("message_not_found")
        if msg.user != self.bot_user_id:
            raise _Reject("cant_update_message")
        text, blocks = message_content(params)
        if len(text) > UPDATE_TEXT_LIMIT:
            raise _Reject("msg_too_long")
        msg.text, msg.blocks = text, blocks
        msg.streaming = False  # an update finishes a stream (how an expired one is ended)
        msg.edits += 1
        msg.history.append(text)
        return {"channel": channel, "ts": msg.ts, "text": text, "message": msg.as_api()}

    async def _delete(self, params: JsonDict, _team: str) -> JsonDict:
        channel = self._channel(params)
        msg = self._find(channel, str(params.get("ts", "")))
        if msg is None:
            raise _Reject("message_not_found")
        if msg.user != self.bot_user_id:
            raise _Reject("cant_delete_message")
        self.delete_message(channel, msg.ts)
        return {"channel": channel, "ts": msg.ts}

    async def _post_ephemeral(self, params: JsonDict, _team: str) -> JsonDict:
        channel = self._channel(params, member=True)
        user = params.get("user")
        if not user:
            raise _Reject("user_not_found")
        text, blocks = message_content(params)
        self.ephemerals.append(FakeEphemeral(channel, str(user), text, blocks, params.get("thread_ts")))
        return {"message_ts": self._allocate_ts()}

    async def _replies(self, params: JsonDict, _team: str) -> JsonDict:
        channel = self._channel(params, member=True)
        ts = str(params.get("ts", ""))
        if self._find(channel, ts) is None:
            raise _Reject("thread_not_found")
        thread = sorted(self.thread(channel, ts), key=lambda m: m.ts)
        # A larger `limit` is capped silently, as Slack does for distributed apps: page with cursors.
        limit = max(1, min(int(params.get("limit") or REPLIES_PAGE_LIMIT), REPLIES_PAGE_LIMIT))
        offset = _decode_cursor(params.get("cursor"))
        page = thread[offset : offset + limit]
        has_more = offset + limit < len(thread)
        next_cursor = _encode_cursor(offset + limit) if has_more else ""
        return {
            "messages": [m.as_api() for m in page],
            "has_more": has_more,
            "response_metadata": {"next_cursor": next_cursor},
        }

    def _top_level(self, channel: str) -> list[FakeMessage]:
        return [m for m in self._messages.get(channel, []) if m.thread_ts in (None, m.ts)]

    async def _history(self, params: JsonDict, _team: str) -> JsonDict:
        """Top-level messages newest first within (oldest, latest), paged as Slack pages them."""
        channel = self._channel(params, member=True)
        oldest, latest = _ts_param(params.get("oldest"), 0.0), _ts_param(params.get("latest"), float("inf"))
        inclusive = str(params.get("inclusive", "")).lower() in ("1", "true")
        in_range = [
            m
            for m in self._top_level(channel)
            if (oldest <= float(m.ts) <= latest if inclusive else oldest < float(m.ts) < latest)
        ]
        newest_first = sorted(in_range, key=lambda m: float(m.ts), reverse=True)
        limit = max(1, min(int(params.get("limit") or 100), REPLIES_PAGE_LIMIT))
        offset = _decode_cursor(params.get("cursor"))
        page = newest_first[offset : offset + limit]
        has_more = offset + limit < len(newest_first)
        messages = []
        for m in page:
            out = m.as_api()
            replies = [r for r in self.thread(channel, m.ts) if r.ts != m.ts]
            if replies:
                out |= {"reply_count": len(replies), "latest_reply": replies[-1].ts}
            messages.append(out)
        return {
            "messages": messages,
            "has_more": has_more,
            "pin_count": 0,
            "response_metadata": {"next_cursor": _encode_cursor(offset + limit) if has_more else ""},
        }

    def _is_private(self, channel: str) -> bool:
        return not channel.startswith("C") or channel in self.private_channels

    async def _members(self, params: JsonDict, _team: str) -> JsonDict:
        channel = self._channel(params)
        if channel in self.not_joined and self._is_private(channel):
            raise _Reject("channel_not_found")  # a private conversation the bot is not in is invisible
        members = self.channel_members.get(channel, ["U1", self.bot_user_id])
        limit = max(1, min(int(params.get("limit") or 100), 1000))
        offset = _decode_cursor(params.get("cursor"))
        more = offset + limit < len(members)
        return {
            "members": members[offset : offset + limit],
            "response_metadata": {"next_cursor": _encode_cursor(offset + limit) if more else ""},
        }

    async def _list(self, params: JsonDict, _team: str) -> JsonDict:
        """The workspace's channels of the asked `types`, paged; private ones only where the bot is."""
        types = set(str(params.get("types") or "public_channel").split(","))
        known = self.known_channels
        if known is None:
            known = {*self._messages, *self.channel_creators, *self.channel_members, *self.channel_names}
        listed = []
        for channel in sorted(c for c in known if c.startswith(("C", "G"))):
            private = self._is_private(channel)
            if ("private_channel" if private else "public_channel") not in types:
                continue
            if private and channel in self.not_joined:
                continue
            name = self.channel_names.get(channel, channel.lower())
            listed.append({"id": channel, "name": name, "is_private": private, "is_channel": not private})
        limit = max(1, min(int(params.get("limit") or 100), 1000))
        offset = _decode_cursor(params.get("cursor"))
        more = offset + limit < len(listed)
        return {
            "channels": listed[offset : offset + limit],
            "response_metadata": {"next_cursor": _encode_cursor(offset + limit) if more else ""},
        }

    async def _files_info(self, params: JsonDict, _team: str) -> JsonDict:
        found = self.files.get(str(params.get("file", "")))
        if found is None:
            raise _Reject("file_not_found")
        return {"file": found.as_event(), "comments": [], "response_metadata": {"next_cursor": ""}}

    async def _download(self, request: web.Request) -> web.StreamResponse:
        """A file's bytes for a bot token; anything else gets Slack's sign-in page (200, HTML)."""
        file_id = request.match_info["file_id"].rpartition("-")[2]
        token = _bearer(request.headers.get("Authorization"))
        self.calls.append(
            Call("files.download", {"file": file_id}, self.tokens.get(token or ""), time.monotonic())
        )
        found = self.files.get(file_id)
        if token not in self.tokens:
            page = "<!DOCTYPE html><html><body>Sign in to Slack</body></html>"
            return web.Response(text=page, content_type="text/html")
        if found is None or found.name != request.match_info["name"]:
            return web.Response(status=404, text="Not found")
        if found.fail_with is not None:
            return web.Response(status=found.fail_with, text="Slack is having trouble")
        if found.redirect_to is not None:
            return web.Response(status=302, headers={"Location": found.redirect_to})
        found.downloads += 1
        return web.Response(body=found.content, content_type=found.mimetype)

    async def _users_info(self, params: JsonDict, team: str) -> JsonDict:
        user_id = str(params.get("user", ""))
        user = self.users.get(user_id)
        if user is None:
            raise _Reject("user_not_found")
        profile = {"real_name": user.real_name, "display_name": user.display_name}
        return {
            "user": {
                "id": user_id,
                "team_id": user.team_id or team,
                "is_admin": user.is_admin,
                "is_owner": user.is_owner,
                "is_primary_owner": False,
                "is_restricted": user.is_restricted,
                "is_ultra_restricted": user.is_ultra_restricted,
                "name": user.display_name or user.real_name.lower().replace(" ", "."),
                "real_name": user.real_name,
                "is_bot": user.is_bot,
                "tz": user.tz,
                "profile": profile,
            }
        }

    # files_upload_v2 in three steps, as slack_sdk sends them (web/async_client.py): a URL per file,
    # the raw bytes POSTed to it without a token, then one call that shares the files.

    async def _get_upload_url(self, params: JsonDict, _team: str) -> JsonDict:
        filename = params.get("filename")
        try:
            length = int(params.get("length", ""))
        except ValueError:
            raise _Reject("invalid_arguments") from None
        if not filename or length <= 0:
            raise _Reject("invalid_arguments")
        file_id = f"F{len(self.uploads) + 1:08d}"
        alt = params.get("alt_txt")
        self.uploads[file_id] = FakeUpload(file_id, str(filename), length, str(alt) if alt else None)
        return {"upload_url": f"http://127.0.0.1:{self._port}/upload/v1/{file_id}", "file_id": file_id}

    async def _receive_upload(self, request: web.Request) -> web.Response:
        file = self.uploads.get(request.match_info["file_id"])
        if file is None:
            return web.Response(status=404, text="Not Found")
        body = await request.read()
        if len(body) != file.length:
            return web.Response(status=400, text="length mismatch")
        file.content = body
        return web.Response(text=f"OK - {len(body)}")

    async def _complete_upload(self, params: JsonDict, _team: str) -> JsonDict:
        try:
            wanted = json.loads(str(params.get("files", "")))
        except ValueError:
            raise _Reject("invalid_arguments") from None
        if not isinstance(wanted, list) or not wanted:
            raise _Reject("invalid_arguments")
        channel = self._channel(params, "channel_id", member=True) if params.get("channel_id") else None
        done: list[JsonDict] = []
        for item in wanted:
            file = self.uploads.get(str(item.get("id")))
            if file is None or file.content is None:
                raise _Reject("file_not_found")
            file.title = item.get("title") or file.filename
            file.channel, file.thread_ts = channel, params.get("thread_ts") or None
            file.initial_comment = params.get("initial_comment") or None
            file.completed_at = time.monotonic()
            done.append({"id": file.id, "name": file.filename, "title": file.title, "size": file.length})
        return {"files": done}

    async def _set_status(self, params: JsonDict, _team: str) -> JsonDict:
        channel = self._channel(params, "channel_id")
        if not params.get("thread_ts"):
            raise _Reject("invalid_arguments")
        status = str(params.get("status", ""))
        self.statuses.append((channel, str(params["thread_ts"]), status))
        self.status_now[channel, str(params["thread_ts"])] = status
        return {}

    async def _set_suggested_prompts(self, params: JsonDict, _team: str) -> JsonDict:
        # As Slack: 1 to 4 prompts, each a title and a message; `thread_ts` is optional in the Messages tab.
        channel = self._channel(params, "channel_id")
        prompts = params.get("prompts")
        if not isinstance(prompts, list) or not 1 <= len(prompts) <= MAX_SUGGESTED_PROMPTS:
            raise _Reject("invalid_arguments")
        pairs: list[tuple[str, str]] = []
        for prompt in prompts:
            if not isinstance(prompt, dict) or set(prompt) != {"title", "message"}:
                raise _Reject("invalid_arguments")
            title, text = prompt["title"], prompt["message"]
            if not (isinstance(title, str) and isinstance(text, str) and title.strip() and text.strip()):
                raise _Reject("invalid_arguments")
            pairs.append((title, text))
        title = params.get("title")
        if title is not None and (not isinstance(title, str) or not title.strip()):
            raise _Reject("invalid_arguments")
        self.suggested_prompts[channel] = (title, pairs)
        return {}

    async def _set_title(self, params: JsonDict, _team: str) -> JsonDict:
        channel = self._channel(params, "channel_id")
        thread_ts, title = params.get("thread_ts"), params.get("title")
        if not thread_ts or not isinstance(title, str) or not title.strip():
            raise _Reject("invalid_arguments")
        self.titles[(channel, str(thread_ts))] = title
        return {}

    async def _conversations_info(self, params: JsonDict, _team: str) -> JsonDict:
        channel = self._channel(params)
        if channel.startswith("G") and channel in self.not_joined:
            raise _Reject("channel_not_found")  # Slack hides private channels from non-members
        is_im = channel.startswith("D")
        info: JsonDict = {
            "id": channel,
            "is_channel": channel.startswith("C"),
            "is_group": channel.startswith("G"),
            "is_im": is_im,
            "is_private": self._is_private(channel),
            "is_member": channel not in self.not_joined,
        }
        if is_im:
            info["user"] = self.dm_users.get(channel, "U1")
        if not is_im:  # a DM has a user, not a creator or a name
            name = self.channel_names.get(channel, channel.lower())
            info |= {"name": name, "creator": self.channel_creators.get(channel, "U0CREATOR")}
        return {"channel": info}

    def _showable(self, view: Any, kinds: frozenset[str]) -> JsonDict:
        """The view as `validate_view` checks it, whose images are files the app uploaded and Slack
        has processed (Block Kit: the poster must have access to a `slack_file`)."""
        checked = validate_view(view, kinds=kinds)
        now = time.monotonic()
        for file_id in slack_file_ids(checked["blocks"]):
            upload = self.uploads.get(file_id)
            if upload is None or upload.completed_at is None:
                raise _Reject("invalid_arguments")
            if now - upload.completed_at < self.file_processing:
                raise _Reject("invalid_arguments")
        return checked

    def _remember_view(self, view: JsonDict, team: str) -> JsonDict:
        stored = dict(view) | {"id": f"V{self._next_view:08d}", "team_id": team}
        self._next_view += 1
        self._views[stored["id"]] = stored
        return stored

    async def _views_open(self, params: JsonDict, team: str) -> JsonDict:
        trigger = params.get("trigger_id")
        if not trigger and not params.get("interactivity_pointer"):
            raise _Reject("invalid_arguments")
        if trigger in self.expired_triggers:
            raise _Reject("expired_trigger_id")
        view = self._remember_view(self._showable(params.get("view"), frozenset({"modal"})), team)
        self.opened_views.append(view)
        return {"view": view}

    async def _views_publish(self, params: JsonDict, team: str) -> JsonDict:
        user = params.get("user_id")
        if not user:
            raise _Reject("invalid_arguments")
        if not str(user).startswith(("U", "W")):
            raise _Reject("user_not_found")
        view = self._remember_view(self._showable(params.get("view"), frozenset({"home"})), team)
        self.home_views[str(user)] = view
        return {"view": view}

    async def _views_update(self, params: JsonDict, team: str) -> JsonDict:
        view_id, external_id = params.get("view_id"), params.get("external_id")
        if not view_id and not external_id:
            raise _Reject("invalid_arguments")
        found = self._views.get(str(view_id)) or next(
            (v for v in self._views.values() if external_id and v.get("external_id") == external_id), None
        )
        if found is None:
            raise _Reject("not_found")
        view = self._showable(params.get("view"), frozenset({found["type"]}))
        updated = dict(view) | {"id": found["id"], "team_id": team}
        self._views[found["id"]] = updated
        if found["type"] == "modal":
            self.opened_views = [updated if v["id"] == found["id"] else v for v in self.opened_views]
        else:
            for user, home in list(self.home_views.items()):
                if home["id"] == found["id"]:
                    self.home_views[user] = updated
        return {"view": updated}

    # agents.sessions.*: arguments as docs.slack.dev/reference/methods/agents.sessions.setStatus and
    # .rename document them (form or JSON bodies; slack_sdk has no methods, the bot sends JSON).
    async def _session_status(self, params: JsonDict, _team: str) -> JsonDict:
        channel, thread_ts = self._session(params)
        status = str(params.get("status") or "")
        if status not in SESSION_STATUSES:
            raise _Reject("invalid_arguments")
        self.session_statuses.append((channel, thread_ts, status))
        return {"status": status}

    async def _session_rename(self, params: JsonDict, _team: str) -> JsonDict:
        channel, thread_ts = self._session(params)
        title = str(params.get("title") or "")
        if not 1 <= len(title) <= SESSION_TITLE_LIMIT:
            raise _Reject("invalid_arguments")
        self.session_titles.append((channel, thread_ts, title))
        return {"title": title}

    def _session(self, params: JsonDict) -> tuple[str, str]:
        channel = self._channel(params, "channel_id")
        if not params.get("thread_ts"):
            raise _Reject("invalid_arguments")  # thread-based sessions need their root's ts
        return channel, str(params["thread_ts"])


def _streamed(text: str) -> list[JsonDict] | None:
    """A streamed message shows its Markdown as a `markdown` block."""
    return [{"type": "markdown", "text": text}] if text else None


def reject(error: str, status: int = 200, retry_after: int | None = None) -> Exception:
    """An error for a custom `route` handler to raise: `{"ok": false, "error": error}`."""
    return _Reject(error, status, retry_after)


def _bearer(header: str | None) -> str | None:
    if header and header.startswith("Bearer "):
        return header.removeprefix("Bearer ").strip() or None
    return None


async def _read_params(request: web.Request) -> JsonDict:
    params: JsonDict = dict(request.query)
    if request.method == "POST" and request.can_read_body:
        if request.content_type == "application/json":
            body = await request.json()
            if isinstance(body, dict):
                params.update(body)
        else:
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    for name in ("blocks", "attachments", "view"):
        if isinstance(params.get(name), str):
            params[name] = json.loads(params[name])
    return params


def _ts_param(value: Any, default: float) -> float:
    if value in (None, ""):
        return default
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise _Reject("invalid_ts_oldest") from exc


def _encode_cursor(offset: int) -> str:
    return base64.b64encode(f"offset:{offset}".encode()).decode()


def _decode_cursor(cursor: Any) -> int:
    if not cursor:
        return 0
    try:
        return int(base64.b64decode(str(cursor)).decode().removeprefix("offset:"))
    except ValueError as exc:
        raise _Reject("invalid_cursor") from exc
