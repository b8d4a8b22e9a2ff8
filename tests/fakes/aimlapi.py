"""A fake AI/ML API on loopback for tests and benchmarks: real HTTP, the real SSE wire format.

    fake = FakeAimlApi(api_key="test-key")            # or: async with FakeAimlApi() as fake:
    await fake.start()
    client = AimlClient(api_key="test-key", base_url=fake.base_url, model="zhipu/glm-5")
    fake.enqueue(Reply(content="Hello world", reasoning="Thinking."))     # served in order
    fake.enqueue(ErrorReply(status=429, retry_after=0.2))                # an error status and body
    fake.default = Reply(content=["word "] * 400, ttft=0.3, chunk_interval=0.02)  # when the queue is empty
    fake.balance = 42.5                       # GET /v2/billing; an ErrorReply there makes it fail
    fake.requests / fake.chat_requests        # RecordedRequest: method, path, headers, json, received_at,
                                              # client_port, inference_id, reply, status, client_disconnected
    await fake.requests[-1].done.wait()       # the handler finished (completed, failed or client gone)
    await fake.stop()

`POST /v1/chat/completions` (also `/chat/completions`) checks the bearer key (401 otherwise), validates
the body (400 "Body validation error": no messages, or `max_tokens` / `max_completion_tokens` below 1
or above the model's output limit `fake.max_output_tokens`) and serves the next scripted reply.
A streamed `Reply` sends `data: {chunk}` events shaped like the real API: reasoning pieces
(`content: null`), content pieces, a chunk with `finish_reason`, then, when the request asked with
`stream_options.include_usage`, a `choices: []` chunk with `usage` and `meta.usage`; then `data: [DONE]`.
A `Reply(tool_calls=[ToolCallScript("fetch_url", '{"url": "..."}')])` streams `delta.tool_calls`
fragments after its content (an opening piece with id and name, then the arguments cut in pieces;
`interleave_calls` mixes parallel calls) and finishes with "tool_calls"; enqueue one Reply per round
and read the tool results the bot sent back in `fake.chat_requests[n].json["messages"]`.
One piece counts as one token; a request's `max_tokens` cuts the pieces and finishes with "length".
Reply options add the trouble real streams have: keep-alive comments, empty-`choices` chunks, junk
lines, a dropped connection, a stall, an error object inside the stream, CRLF line endings, events
split over several TCP writes, chunks spread over several `data:` lines, a delay before the response
headers. A request with `stream: false` gets one JSON completion.
Every response has an `x-inference-id` and echoes `X-Client-Request-Id`.
Error bodies use AI/ML's shape (`message`, `path`, `requestId`, `statusCode`, `timestamp`) unless
`shape="openai"` (or `fake.error_shape`) asks for `{"error": {"message", "type", "code"}}`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self

from aiohttp import web
from multidict import CIMultiDict

ErrorShape = Literal["aimlapi", "openai"]

STATUS_MESSAGES = {
    400: "Body validation error",
    401: "This request requires a valid API key",
    403: "You've run out of credits. Please top up your balance to continue.",
    404: "Not found",
    429: "Too Many Requests",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Generation timeout",
}
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}
_GARBAGE = (
    b"data: {this is not json\n\n",
    b'data: "a bare string"\n\n',
    b"data: [1, 2, 3]\n\n",
    b"event: ping\nid: 7\nretry: 3000\n\n",
    b"data:\n\n",
    b"what is this line\n\n",
)


@dataclass(frozen=True)
class ToolCallScript:
    """A tool call the fake streams: `arguments` is the JSON text as the model writes it (it may be
    broken on purpose), sent over `pieces` chunks cut anywhere, even inside a string."""

    name: str
    arguments: str = "{}"
    id: str | None = None  # None: "call_<index>_<random>"
    pieces: int = 3


@dataclass(frozen=True)
class Reply:
    """A streamed answer. `content`/`reasoning`: a string cut into `chunk_size` pieces, or the pieces."""

    content: str | Sequence[str] = "Hello world"
    reasoning: str | Sequence[str] = ""
    chunk_size: int = 4
    ttft: float = 0.0  # seconds from the response headers to the first piece
    hold_until: asyncio.Event | None = None  # the first piece waits (after `ttft`) until this is set
    chunk_interval: float = 0.0  # seconds between pieces
    finish_reason: str | None = "stop"  # None: no finish chunk
    usage: bool = True  # send the final `choices: []` usage chunk
    prompt_tokens: int | None = None  # None: estimated from the request, 4 characters a token
    cached_tokens: int = 0
    credits_used: int | None = 1234  # None: no `meta.usage`
    usd_spent: float | None = None  # None: credits_used / 2,000,000
    model: str = "glm-5"
    done: bool = True  # send `data: [DONE]`
    disconnect_after: int | None = None  # drop the connection after this many pieces
    stall_after: int | None = None  # go silent (connection open) after this many pieces
    error_after: int | None = None  # send an error object and end the body after this many pieces
    keepalives: bool = False  # `: keep-alive` comments and blank lines between chunks
    empty_choices_chunk: bool = False  # a `choices: []` chunk without usage before the first piece
    garbage_lines: bool = False  # junk lines between chunks: bad JSON, other SSE fields, non-SSE text
    crlf: bool = False  # end lines with CRLF (the SSE spec allows CRLF, LF or CR)
    writes_per_event: int = 1  # write each event in this many pieces, flushed a moment apart
    multiline_data: bool = False  # each chunk's JSON pretty-printed over several `data:` lines
    header_delay: float = 0.0  # seconds before the response headers are sent
    tool_calls: Sequence[ToolCallScript] = ()  # streamed after the content; finish "tool_calls"
    interleave_calls: bool = False  # parallel calls' argument pieces alternate between the calls


@dataclass(frozen=True)
class ErrorReply:
    """An error response; `message` None means the real API's message for the status."""

    status: int = 500
    message: str | None = None
    retry_after: float | str | None = None
    shape: ErrorShape | None = None  # None: the fake's `error_shape`
    code: str | None = None  # OpenAI shape's `error.code`, e.g. "insufficient_quota"
    delay: float = 0.0  # seconds before answering


@dataclass
class RecordedRequest:
    """One request the fake received, and how it ended."""

    method: str
    path: str
    headers: CIMultiDict[str]
    json: Any
    received_at: float = field(default_factory=time.monotonic)
    client_port: int | None = None  # the client's TCP port: equal ports mean a reused connection
    inference_id: str | None = None  # the x-inference-id the fake answered with
    reply: Reply | ErrorReply | None = None
    status: int | None = None
    client_disconnected: bool = False  # the client went away before the response was complete
    done: asyncio.Event = field(default_factory=asyncio.Event)  # set when the handler finished
    content_sent_at: list[float] = field(default_factory=list)  # monotonic, per content piece written


GLM5_OUTPUT_LIMIT = 131_072  # glm-5's `info.outputMax` in GET /v1/models (128K)
WRITE_PAUSE = 0.005  # seconds between the pieces of an event split over several writes


class FakeAimlApi:
    """The fake server; see the module docstring for how to script it."""

    def __init__(
        self,
        api_key: str = "test-key",
        *,
        balance: float | ErrorReply = 123.45,
        error_shape: ErrorShape = "aimlapi",
    ) -> None:
        self.api_key = api_key
        self.balance = balance
        self.error_shape: ErrorShape = error_shape
        self.default: Reply | ErrorReply = Reply()
        self.max_output_tokens = GLM5_OUTPUT_LIMIT
        self.requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._last_activity = time.monotonic()
        self._queue: deque[Reply | ErrorReply] = deque()
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._port = 0

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        """The `AIMLAPI_BASE_URL` to point a client at."""
        return f"{self.root_url}/v1"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def enqueue(self, *replies: Reply | ErrorReply) -> None:
        self._queue.extend(replies)

    @property
    def idle_since(self) -> float | None:
        """`time.monotonic()` of the last request's end, or None while one is being handled."""
        return None if self._in_flight else self._last_activity

    async def start(self) -> None:
        self._stopping.clear()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_get("/v2/billing", self._billing)
        # handler_cancellation: a client that disconnects cancels its handler, which is how we see it
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self._in_flight += 1
        try:
            return await self._answer_chat(request)
        finally:
            self._in_flight -= 1
            self._last_activity = time.monotonic()

    async def _answer_chat(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        try:
            if not self._authorized(request):
                return self._error(request, record, ErrorReply(401))
            if not self._valid_body(record.json):
                return self._error(request, record, ErrorReply(400))
            reply = self._queue.popleft() if self._queue else self.default
            record.reply = reply
            if isinstance(reply, ErrorReply):
                await asyncio.sleep(reply.delay)
                return self._error(request, record, reply)
            await asyncio.sleep(reply.header_delay)
            if not record.json.get("stream"):
                return self._complete(request, record, reply)
            return await self._stream(request, record, reply)
        except asyncio.CancelledError:
            record.client_disconnected = not self._stopping.is_set()
            raise
        finally:
            record.done.set()

    def _valid_body(self, body: Any) -> bool:
        """What the API's body validation checks that a client could get wrong."""
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return False
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            if not 1 <= value <= self.max_output_tokens:
                return False
        return True

    async def _billing(self, request: web.Request) -> web.StreamResponse:
        self._in_flight += 1
        try:
            return await self._answer_billing(request)
        finally:
            self._in_flight -= 1
            self._last_activity = time.monotonic()

    async def _answer_billing(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        try:
            if not self._authorized(request):
                return self._error(request, record, ErrorReply(401))
            if isinstance(self.balance, ErrorReply):
                return self._error(request, record, self.balance)
            record.status = 200
            body = {"current_balance": self.balance, "currency": "USD"}
            return web.json_response(body, headers=self._headers(request, record))
        finally:
            record.done.set()

    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = RecordedRequest(request.method, request.path, CIMultiDict(request.headers), body)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        record.client_port = peer[1] if isinstance(peer, tuple) else None
        record.inference_id = str(uuid.uuid4())
        self.requests.append(record)
        return record

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _headers(self, request: web.Request, record: RecordedRequest) -> dict[str, str]:
        headers = {"x-inference-id": record.inference_id or ""}
        if client_id := request.headers.get("X-Client-Request-Id"):
            headers["X-Client-Request-Id"] = client_id
        return headers

    def _error(self, request: web.Request, record: RecordedRequest, reply: ErrorReply) -> web.Response:
        record.status = reply.status
        headers = self._headers(request, record)
        if reply.retry_after is not None:
            headers["Retry-After"] = str(reply.retry_after)
        body = error_body(reply, path=request.path, default_shape=self.error_shape)
        return web.json_response(body, status=reply.status, headers=headers)

    def _complete(self, request: web.Request, record: RecordedRequest, reply: Reply) -> web.Response:
        record.status = 200
        pieces, finish_reason = _script(reply, record.json)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(text for kind, text in pieces if kind == "content"),
            "reasoning_content": "".join(text for kind, text in pieces if kind == "reasoning_content"),
        }
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id or f"call_{i}",
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for i, c in enumerate(reply.tool_calls)
            ]
        body = {
            **_envelope("chat.completion", f"chatcmpl-{uuid.uuid4().hex}", reply.model),
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            **_usage(reply, record.json, pieces),
        }
        headers = self._headers(request, record)
        if reply.credits_used is not None:
            headers["x-aimlapi-credits-used"] = str(reply.credits_used)
        return web.json_response(body, headers=headers)

    async def _stream(
        self, request: web.Request, record: RecordedRequest, reply: Reply
    ) -> web.StreamResponse:
        headers = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            **self._headers(request, record),
        }
        response = web.StreamResponse(status=200, headers=headers)
        record.status = 200
        await response.prepare(request)
        pieces, finish_reason = _script(reply, record.json)
        envelope = _envelope("chat.completion.chunk", f"chatcmpl-{uuid.uuid4().hex}", reply.model)

        newline = "\r\n" if reply.crlf else "\n"
        sent = 0

        async def write(text: str) -> None:
            data = text.replace("\n", newline).encode()
            for index, piece in enumerate(_split(data, reply.writes_per_event)):
                if index:
                    await asyncio.sleep(WRITE_PAUSE)  # let the client read what came so far
                await response.write(piece)

        async def send(payload: Mapping[str, Any] | str) -> None:
            nonlocal sent
            if isinstance(payload, str):
                lines = [payload]
            elif reply.multiline_data:
                lines = json.dumps(payload, indent=1).split("\n")
            else:
                lines = [json.dumps(payload)]
            await write("".join(f"data: {line}\n" for line in lines) + "\n")
            if reply.keepalives:
                await write(": keep-alive\n\n\n")
            if reply.garbage_lines:
                await write(_GARBAGE[sent % len(_GARBAGE)].decode())
            sent += 1

        try:
            if reply.empty_choices_chunk:
                await send({**envelope, "choices": []})
            await asyncio.sleep(reply.ttft)
            if reply.hold_until is not None:
                await asyncio.wait_for(reply.hold_until.wait(), 10)
            for index in range(len(pieces) + 1):
                if index == reply.disconnect_after:
                    assert request.transport is not None
                    request.transport.close()  # flushes what was written, then drops the connection
                    return response
                if index == reply.stall_after:
                    await self._stopping.wait()
                    return response
                if index == reply.error_after:
                    await send({"error": {"message": "Internal server error", "type": "server_error"}})
                    await response.write_eof()
                    return response
                if index == len(pieces):
                    break
                if index and reply.chunk_interval:
                    await asyncio.sleep(reply.chunk_interval)
                kind, text = pieces[index]
                delta: dict[str, Any] = {"role": "assistant"} if index == 0 else {}
                delta.update({"content": text if kind == "content" else None, kind: text})
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
                await send({**envelope, "choices": [choice]})
                if kind == "content":
                    record.content_sent_at.append(time.monotonic())
            for fragment in _tool_fragments(reply):
                choice = {
                    "index": 0,
                    "delta": {"tool_calls": [fragment]},
                    "logprobs": None,
                    "finish_reason": None,
                }
                await send({**envelope, "choices": [choice]})
            if finish_reason is not None:
                choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason}
                await send({**envelope, "choices": [choice]})
            if reply.usage and _wants_usage(record.json):
                await send({**envelope, "choices": [], **_usage(reply, record.json, pieces)})
            if reply.done:
                await send("[DONE]")
            await response.write_eof()
        except ConnectionError:
            record.client_disconnected = True
        return response


def error_body(reply: ErrorReply, *, path: str, default_shape: ErrorShape = "aimlapi") -> dict[str, Any]:
    """The JSON body the real API (or OpenAI, with shape "openai") sends with an error status."""
    message = reply.message or STATUS_MESSAGES.get(reply.status, "Error")
    if (reply.shape or default_shape) == "openai":
        error_type = _OPENAI_TYPES.get(reply.status, "server_error" if reply.status >= 500 else "api_error")
        return {"error": {"message": message, "type": error_type, "param": None, "code": reply.code}}
    return {
        "message": message,
        "path": path,
        "requestId": str(uuid.uuid4()),
        "statusCode": reply.status,
        "timestamp": datetime.now(UTC).isoformat(),
    }


def _script(reply: Reply, request: Any) -> tuple[list[tuple[str, str]], str | None]:
    """The (delta field, text) pieces to send and the finish reason; `max_tokens` cuts the pieces
    (one token a piece, reasoning included) and makes the finish reason "length"."""
    pieces = [("reasoning_content", p) for p in _pieces(reply.reasoning, reply.chunk_size)]
    pieces += [("content", p) for p in _pieces(reply.content, reply.chunk_size)]
    limit = request.get("max_tokens") if isinstance(request, dict) else None
    if isinstance(limit, int) and 0 < limit < len(pieces):
        return pieces[:limit], "length"
    if reply.tool_calls and reply.finish_reason == "stop":
        return pieces, "tool_calls"
    return pieces, reply.finish_reason


def _tool_fragments(reply: Reply) -> list[dict[str, Any]]:
    """`delta.tool_calls` pieces: each call opens with its id, type and name (arguments ""), then
    its argument text follows in pieces; with `interleave_calls` the calls' pieces alternate."""
    per_call: list[list[dict[str, Any]]] = []
    for index, call in enumerate(reply.tool_calls):
        call_id = call.id or f"call_{index}_{uuid.uuid4().hex[:8]}"
        opening = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        size = max(1, -(-len(call.arguments) // max(1, call.pieces)))
        rest = [
            {"index": index, "function": {"arguments": call.arguments[i : i + size]}}
            for i in range(0, len(call.arguments), size)
        ]
        per_call.append([opening, *rest])
    if not reply.interleave_calls:
        return [f for call in per_call for f in call]
    openings = [call[0] for call in per_call]
    rests = [call[1:] for call in per_call]
    mixed = [f for group in itertools.zip_longest(*rests) for f in group if f is not None]
    return [*openings, *mixed]


def _wants_usage(request: Any) -> bool:
    """OpenAI-compatible servers send the usage chunk of a stream only when asked for it."""
    options = request.get("stream_options") if isinstance(request, dict) else None
    return isinstance(options, dict) and options.get("include_usage") is True


def _split(data: bytes, parts: int) -> list[bytes]:
    """`data` in `parts` pieces (fewer if it is short), also cut between a CR and its LF if it has one."""
    if parts <= 1 or len(data) < 2:
        return [data]
    cuts = {len(data) * i // parts for i in range(1, parts)}
    crlf = data.find(b"\r\n")
    if crlf >= 0:
        cuts.add(crlf + 1)  # a decoder must not end a line at the CR and start an empty one at the LF
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _pieces(text: str | Sequence[str], size: int) -> list[str]:
    if isinstance(text, str):
        return [text[i : i + size] for i in range(0, len(text), max(1, size))]
    return list(text)


def _envelope(kind: str, completion_id: str, model: str) -> dict[str, Any]:
    return {"id": completion_id, "object": kind, "created": int(time.time()), "model": model}


def _usage(reply: Reply, request: Any, pieces: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """`usage` (and `meta.usage` when credits are known), one token a piece."""
    messages = request.get("messages", []) if isinstance(request, dict) else []
    chars = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
    prompt = reply.prompt_tokens if reply.prompt_tokens is not None else max(1, chars // 4)
    completion = len(pieces)
    reasoning_pieces = sum(1 for kind, _ in pieces if kind == "reasoning_content")
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": reasoning_pieces},
    }
    if reply.credits_used is None:
        return {"usage": usage}
    usd = reply.usd_spent if reply.usd_spent is not None else reply.credits_used / 2_000_000
    return {"usage": usage, "meta": {"usage": {"credits_used": reply.credits_used, "usd_spent": usd}}}
