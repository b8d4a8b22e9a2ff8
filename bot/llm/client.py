"""Streaming chat completions from the AI/ML API (OpenAI-compatible), with retries and deadlines.

Policy lives here; I/O goes through an injectable httpx transport (aiohttp's by default,
bot.llm.transport). Connection errors, 429 and 5xx are retried with jittered backoff only before
the first token: after it a retry would bill twice.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx

from bot.llm.errors import (
    LLMError,
    LLMTimeoutError,
    error_for_early_end,
    error_for_status,
    error_for_stream_event,
    retry_delay,
)
from bot.llm.sse import (
    ChunkEvent,
    DoneEvent,
    ErrorEvent,
    LineSplitter,
    SseDecoder,
    SseEvent,
    StreamAccumulator,
)
from bot.llm.transport import aiohttp_transport
from bot.llm.transport_errors import error_for_read, error_for_transport
from bot.llm.types import ChatMessage, CompletionResult, Delta

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_AFTER_FINISH_GRACE = 10.0  # seconds to wait for the usage chunk once the answer itself is finished
_DRAIN_GRACE = 0.5  # seconds to read a finished body to its end, so its connection can be reused
# Seconds between two reads of a stream once its text flows. Chunks come 20-50 a second; reading each
# as it lands wakes the event loop (and the reply's renderer) per chunk, which is most of a reply's
# CPU and, with many streams, saturates the loop. Slack shows new text about once a second anyway.
READ_PACE = 0.1


@dataclass(frozen=True)
class _Policy:
    max_retries: int
    backoff_base: float
    backoff_max: float
    total_timeout: float
    read_timeout: float
    secret: str
    read_pace: float


class AimlClient:
    """One connection pool to the AI/ML API; share a single instance per process."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        model: str,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        total_timeout: float = 300.0,
        max_retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
        read_pace: float = READ_PACE,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not api_key:
            raise ValueError("api_key must not be empty")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.model = model
        self._chat_url = base_url.rstrip("/") + "/chat/completions"
        self._billing_url = url.copy_with(raw_path=b"/v2/billing")
        self._policy = _Policy(
            max_retries, backoff_base, backoff_max, total_timeout, read_timeout, api_key, read_pace
        )
        self._http = httpx.AsyncClient(
            transport=transport or aiohttp_transport(),
            # read is per chunk: a silent stream fails after read_timeout even while the deadline is far
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=None),
            # hundreds of concurrent streams are the normal load; the overall deadline bounds waits
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
            headers={"Authorization": f"Bearer {api_key}"},
        )

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int | None = None,
        request_id: str | None = None,
        model: str | None = None,
        tools: Sequence[Mapping[str, Any]] = (),
        tool_choice: str | None = None,
        parallel_tool_calls: bool | None = None,
    ) -> ChatStream:
        """A not-yet-started completion; use as `async with ... as stream: async for delta in stream`.

        `model` overrides the client's default model for this one call (a channel's own model).
        `tools` are OpenAI-compatible `{"type": "function", "function": {...}}` objects; `tool_choice`
        ("auto", "none", "required") and `parallel_tool_calls` are sent only when given."""
        if request_id is None:
            request_id = str(uuid.uuid4())
        elif not _REQUEST_ID.fullmatch(request_id):
            raise ValueError("request_id must be 1-128 characters of [A-Za-z0-9._:-]")
        body: dict[str, Any] = {
            "model": model or self.model,
            "messages": [wire_message(m) for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if tools:
            body["tools"] = [dict(t) for t in tools]
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
        if parallel_tool_calls is not None and tools:
            body["parallel_tool_calls"] = parallel_tool_calls
        request = self._http.build_request(
            "POST",
            self._chat_url,
            json=body,
            headers={"X-Client-Request-Id": request_id, "Accept": "text/event-stream"},
        )
        return ChatStream(self._http, request, request_id, self._policy)

    async def fetch_balance(self) -> float | None:
        """The account balance in USD; None when the endpoint has no AI/ML billing API (404)."""
        try:
            async with asyncio.timeout(self._policy.total_timeout):
                response = await self._http.get(self._billing_url)
        except TimeoutError:
            raise LLMTimeoutError("the AI/ML API billing endpoint did not answer in time") from None
        except httpx.HTTPError as exc:
            raise error_for_transport(exc) from exc
        if response.status_code == 404:
            return None
        if not response.is_success:
            raise error_for_status(
                response.status_code, response.content, response.headers, secret=self._policy.secret
            )
        try:
            data = response.json()
        except ValueError:
            return None
        balance = data.get("current_balance") if isinstance(data, dict) else None
        if isinstance(balance, bool) or not isinstance(balance, int | float):
            return None
        return float(balance)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class ChatStream:
    """One streamed completion: an async context manager and a one-shot async iterator of deltas.

    Iteration raises only `LLMError` subclasses (and `CancelledError`); `result()` reports what was
    received so far at any time, also after an error or a cancellation.
    """

    def __init__(
        self, http: httpx.AsyncClient, request: httpx.Request, request_id: str, policy: _Policy
    ) -> None:
        self.request_id = request_id
        self._http = http
        self._request = request
        self._policy = policy
        self._iterator: AsyncGenerator[Delta, None] | None = None
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[list[str]] | None = None  # the lines of each read of the body
        self._decoder = SseDecoder()
        self._pending: deque[SseEvent] = deque()  # events of the last read not yet taken
        self._read_at = 0.0  # loop time of the last read of the body
        self._answer = StreamAccumulator()
        self._inference_id: str | None = None
        self._started: float | None = None
        self._first_token: float | None = None
        self._ended: float | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the stream and release its connection (idempotent)."""
        if self._iterator is not None:
            await self._iterator.aclose()
        await self._close_response()
        self._mark_ended()

    def __aiter__(self) -> AsyncIterator[Delta]:
        if self._iterator is not None:
            raise RuntimeError("a ChatStream can be iterated only once")
        self._iterator = self._run()
        return self._iterator

    def result(self) -> CompletionResult:
        now = self._ended if self._ended is not None else time.monotonic()
        started = self._started if self._started is not None else now
        return CompletionResult(
            content=self._answer.content,
            reasoning=self._answer.reasoning,
            finish_reason=self._answer.finish_reason,
            usage=self._answer.usage,
            model=self._answer.model,
            inference_id=self._inference_id,
            client_request_id=self.request_id,
            ttft_ms=None if self._first_token is None else _ms(self._first_token - started),
            duration_ms=_ms(now - started),
            tool_calls=self._answer.tool_calls,
        )

    async def _run(self) -> AsyncGenerator[Delta, None]:
        loop = asyncio.get_running_loop()
        self._started = time.monotonic()
        deadline = loop.time() + self._policy.total_timeout
        attempt = 0
        try:
            while True:
                attempt += 1
                try:
                    await self._open(deadline)
                    while (delta := await self._next_delta(deadline)) is not None:
                        yield delta
                    return
                except LLMError as exc:
                    exc.attempts = attempt
                    delay = self._retry_delay(exc, attempt, deadline - loop.time())
                    if delay is None:
                        logger.warning(
                            "AI/ML API call %s failed after %d attempt(s): %s", self.request_id, attempt, exc
                        )
                        raise
                    msg = "AI/ML API call %s attempt %d failed (%s); retrying in %.2fs"
                    logger.warning(msg, self.request_id, attempt, exc, delay)
                    await self._close_response()  # give the connection back while we wait
                    await asyncio.sleep(delay)
        finally:
            await self._close_response()
            self._mark_ended()

    async def _open(self, deadline: float) -> None:
        """Send the request; on success the body's lines are ready, otherwise raise the status's error."""
        await self._close_response()
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._http.send(self._request, stream=True)
        except TimeoutError:
            raise self._deadline_error() from None
        except httpx.HTTPError as exc:
            raise error_for_transport(exc) from exc
        self._response = response
        self._decoder = SseDecoder()
        self._pending.clear()
        self._inference_id = response.headers.get("x-inference-id") or self._inference_id
        if response.is_success and "json" not in response.headers.get("content-type", ""):
            self._lines = _line_batches(response)
            return
        try:
            async with asyncio.timeout_at(deadline):
                body = await response.aread()
        except TimeoutError:
            raise self._deadline_error() from None
        except httpx.HTTPError as exc:
            raise error_for_transport(exc) from exc
        finally:
            await self._close_response()
        if response.is_success:  # a server that ignored stream=true: read the whole answer as one chunk
            self._lines = _lines_of([f"data: {' '.join(body.decode('utf-8', 'replace').splitlines())}"])
            return
        raise error_for_status(response.status_code, body, response.headers, secret=self._policy.secret)

    async def _next_delta(self, deadline: float) -> Delta | None:
        """The next piece of text, or None once the answer is complete."""
        while True:
            event = await self._next_event(deadline)
            if isinstance(event, ChunkEvent):
                delta = self._take(event)
                if delta is not None:
                    return self._with_arrived(delta)
                continue
            finished = self._answer.finish_reason is not None
            if isinstance(event, DoneEvent):
                self._mark_ended()
                await self._drain()
            elif isinstance(event, ErrorEvent) and not finished:
                raise error_for_stream_event(
                    event.body,
                    event.status,
                    after_first_token=self._first_token is not None,
                    secret=self._policy.secret,
                )
            elif not finished:  # the body ended with neither [DONE] nor a finish reason
                raise error_for_early_end(after_first_token=self._first_token is not None)
            return None

    def _take(self, event: ChunkEvent) -> Delta | None:
        delta = self._answer.apply(event)
        if self._first_token is None and (delta is not None or event.tool_calls):
            # A call is output like text: billed, so never retried once it has begun.
            self._first_token = time.monotonic()
        return delta

    def _with_arrived(self, delta: Delta) -> Delta:
        """`delta` joined by the text of the chunks of the same kind that arrived with it: under load
        many chunks wait in one read, and the consumer (the reply's renderer) then wakes once for all.
        Text of another kind (content after reasoning) stays for the next delta, so order holds."""
        content, reasoning = [delta.content], [delta.reasoning]
        while self._pending and isinstance(event := self._pending[0], ChunkEvent):
            if (event.content or event.reasoning) and (
                bool(event.content) != bool(delta.content) or bool(event.reasoning) != bool(delta.reasoning)
            ):
                break
            self._pending.popleft()
            more = self._take(event)
            if more is not None:
                content.append(more.content)
                reasoning.append(more.reasoning)
        if len(content) == 1:
            return delta
        return Delta(content="".join(content), reasoning="".join(reasoning))

    async def _next_event(self, deadline: float) -> SseEvent | None:
        """The next event of the body, or None at its end; read failures become `LLMError`s."""
        if self._pending:
            return self._pending.popleft()
        assert self._lines is not None
        loop = asyncio.get_running_loop()
        while True:
            finished = self._answer.finish_reason is not None
            if self._first_token is not None and not finished:
                # What arrives meanwhile waits in the socket's buffer and comes in the next read.
                pause = min(self._read_at + self._policy.read_pace, deadline) - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
            limit = min(deadline, loop.time() + _AFTER_FINISH_GRACE) if finished else deadline
            try:
                if finished or limit - loop.time() <= self._policy.read_timeout:
                    async with asyncio.timeout_at(limit):
                        lines = await anext(self._lines)
                else:
                    # httpx's read timeout already ends this wait before the deadline; a timeout
                    # scope per read costs about a tenth of the loop's time under load.
                    lines = await anext(self._lines)
            except StopAsyncIteration:
                return self._decoder.end()
            except (TimeoutError, httpx.HTTPError) as exc:
                if finished:  # the answer is whole; only the usage chunk is lost
                    logger.warning("AI/ML API call %s: no usage after the answer (%r)", self.request_id, exc)
                    return None
                if isinstance(exc, TimeoutError):
                    raise self._deadline_error() from None
                raise error_for_read(exc, after_first_token=self._first_token is not None) from exc
            self._read_at = loop.time()
            for line in lines:
                event = self._decoder.feed(line)
                if event is not None:
                    self._pending.append(event)
            if self._pending:
                return self._pending.popleft()

    def _deadline_error(self) -> LLMTimeoutError:
        return LLMTimeoutError(f"no complete answer within the overall {self._policy.total_timeout:g}s")

    def _retry_delay(self, exc: LLMError, attempt: int, remaining: float) -> float | None:
        """Seconds to wait before the next attempt, or None when the error is final."""
        if self._first_token is not None or attempt > self._policy.max_retries:
            return None  # after the first token a new attempt would bill the answer twice
        delay = retry_delay(exc, attempt, base=self._policy.backoff_base, cap=self._policy.backoff_max)
        return delay if delay is not None and delay < remaining else None

    async def _drain(self) -> None:
        """Read the (tiny) rest of a finished body so the connection returns to the pool."""
        if self._lines is None:
            return
        try:
            async with asyncio.timeout(_DRAIN_GRACE):
                async for _ in self._lines:
                    pass
        except (TimeoutError, httpx.HTTPError):
            pass

    async def _close_response(self) -> None:
        response, self._response = self._response, None
        lines, self._lines = self._lines, None
        if response is not None:
            await response.aclose()
        if (aclose := getattr(lines, "aclose", None)) is not None:
            await aclose()  # now, rather than from the event loop's finalizer at some later time

    def _mark_ended(self) -> None:
        if self._started is not None and self._ended is None:
            self._ended = time.monotonic()


async def _lines_of(lines: list[str]) -> AsyncIterator[list[str]]:
    yield lines


async def _line_batches(response: httpx.Response) -> AsyncIterator[list[str]]:
    """The body's whole lines, a list per read from the connection (reads that end no line are
    not passed on)."""
    splitter = LineSplitter()
    async for data in response.aiter_bytes():
        if lines := splitter.feed(data):
            yield lines
    if rest := splitter.end():
        yield rest


def wire_message(message: ChatMessage) -> dict[str, Any]:
    """One message as the OpenAI-compatible API takes it."""
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
        # An assistant message that only calls tools has no text: null is what the API expects.
        wire["content"] = message.content or None
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    return wire


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))
