"""N real bot processes on one PostgreSQL database behind a loopback round-robin balancer.

    async with FakeSlackApi(...) as slack, FakeAimlApi(...) as aiml:
        async with replica_set(3, slack, aiml, tmp_path) as bots:
            await bots.send(mention("hi", "1.000001"))      # signed, through the balancer
            bots.balancer.served                            # which replica took which request
            bots.owner_of(aiml.chat_requests[0])            # which replica is streaming that call
            bots.kill(1)                                    # SIGKILL; the balancer skips it after

The database is migrated once (`python -m bot migrate`), then the replicas start side by side (each
in a directory of its own, so their spools and logs are apart). On exit every replica gets SIGTERM at
once (SIGKILL after a short grace) and the tail of each log is printed: pytest shows it when the test
failed. The balancer is the tests' own, never shipped: one aiohttp server that forwards each request
to the next replica in turn, and to the one after when a replica refuses the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiohttp import web

from bench.botproc import SIGNING_SECRET, BotProcess, bot_environment, fresh_database, running_bot
from tests.fakes.aimlapi import FakeAimlApi, RecordedRequest
from tests.fakes.slack_api import FakeSlackApi
from tests.harness import signed_headers

# Headers that belong to one hop (RFC 9110 7.6.1) or that aiohttp sets itself.
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}
)
_event_ids = itertools.count(1)
LOG_TAIL_LINES = 40
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """One request the balancer forwarded: to which replica (its index), and the answer's status."""

    replica: int
    path: str
    status: int
    body: bytes


class Balancer:
    """Round robin per request (not per connection: a client's keep-alive must not pin a replica)."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = list(ports)
        self.served: list[Served] = []
        self.refused: list[int] = []  # replica indexes that refused a connection, in order
        self._turn = itertools.count()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        # No pooling: a replica killed with connections open must not hand them out again.
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=30),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        for _ in range(len(self.ports)):
            index = next(self._turn) % len(self.ports)
            url = f"http://127.0.0.1:{self.ports[index]}{request.rel_url}"
            try:
                async with self._http.request(request.method, url, data=body, headers=headers) as answer:
                    payload = await answer.read()
                    out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS}
            except aiohttp.ClientConnectorError:
                self.refused.append(index)  # down (killed, or not started): the next one takes it
                continue
            except aiohttp.ClientError:
                # The replica died with the request in hand: a gateway error, as a real balancer
                # answers (Slack retries the event, and another replica takes the retry).
                self.served.append(Served(index, request.path, 502, body))
                return web.Response(status=502, text="the replica went away")
            self.served.append(Served(index, request.path, answer.status, body))
            return web.Response(status=answer.status, headers=out, body=payload)
        return web.Response(status=502, text="no replica answered")


def socket_owners(pids: Sequence[int]) -> dict[int, int]:
    """Local TCP port -> the pid among `pids` holding that socket (from /proc: the network
    namespace's socket table, and each process's open file descriptors)."""
    by_inode: dict[str, int] = {}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(FileNotFoundError):
                    by_inode[os.readlink(f"/proc/{pid}/fd/{fd}")] = pid
    owners: dict[int, int] = {}
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            owner = by_inode.get(f"socket:[{fields[9]}]")
            if owner is not None:
                owners[int(fields[1].rsplit(":", 1)[1], 16)] = owner
    return owners


@dataclass
class ReplicaSet:
    bots: list[BotProcess]
    balancer: Balancer
    database_url: str
    env: dict[str, str]
    started_in: float  # seconds from the migration's start to every replica answering /healthz
    http: httpx.AsyncClient = field(repr=False)

    @property
    def pids(self) -> list[int]:
        return [b.pid for b in self.bots]

    def index_of(self, pid: int | None) -> int | None:
        return next((i for i, b in enumerate(self.bots) if b.pid == pid), None)

    def owner_of(self, request: RecordedRequest) -> int | None:
        """The index of the replica whose connection made `request` to the fake AI/ML API."""
        if request.client_port is None:
            return None
        return self.index_of(socket_owners(self.pids).get(request.client_port))

    def kill(self, index: int) -> None:
        """kill -9: no drain, no final edit, no lease released."""
        self.bots[index].process.kill()

    def alive(self, index: int) -> bool:
        return self.bots[index].process.returncode is None

    async def send(self, event: dict[str, Any], *, team: str = "T1", event_id: str | None = None) -> int:
        """A signed Events API request through the balancer; returns the HTTP status."""
        body = json.dumps(
            {
                "token": "legacy",
                "team_id": team,
                "api_app_id": "A1",
                "type": "event_callback",
                "event_id": event_id or f"EvR{next(_event_ids):08d}",
                "event_time": int(time.time()),
                "event": event,
            }
        )
        response = await self.http.post(
            "/slack/events", content=body, headers=signed_headers(body, secret=SIGNING_SECRET)
        )
        return response.status_code

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tails(self.bots, lines)


def log_tails(bots: Sequence[BotProcess], lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` of each replica's log, headed by its index, pid and exit code."""
    parts = []
    for i, bot in enumerate(bots):
        text = bot.log_path.read_text(errors="replace") if bot.log_path.exists() else ""
        tail = "\n".join(text.splitlines()[-lines:])
        parts.append(f"--- replica {i} (pid {bot.pid}, exit {bot.process.returncode}) ---\n{tail}")
    return "\n".join(parts)


async def migrate(env: Mapping[str, str], workdir: Path) -> None:
    """`python -m bot migrate`, once, before any replica starts (the documented separate step)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "migrate",
        cwd=workdir,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120.0)
    if process.returncode != 0:
        raise RuntimeError(f"python -m bot migrate exited {process.returncode}:\n{out.decode()[-3000:]}")


@asynccontextmanager
async def running_replicas(
    count: int,
    env: Mapping[str, str],
    workdir: Path,
    *,
    stop_grace: float = 5.0,
    show_logs: bool = True,
) -> AsyncIterator[list[BotProcess]]:
    """`count` bot processes on `env`'s database (migrated here first), each in a directory of its
    own; all stopped at once on exit (SIGTERM, SIGKILL after `stop_grace`)."""
    await migrate(env, workdir)
    dirs = [workdir / f"replica-{i}" for i in range(count)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        # Side by side; every start is awaited before a failure is raised, so none is left running.
        entered = await asyncio.gather(
            *(stack.enter_async_context(running_bot(d, env)) for d in dirs), return_exceptions=True
        )
        bots = [b for b in entered if isinstance(b, BotProcess)]
        try:
            failed = [e for e in entered if isinstance(e, BaseException)]
            if failed:
                raise failed[0]
            yield bots
        finally:
            await asyncio.gather(*(b.stop(stop_grace) for b in bots))  # at once, not one by one
            if show_logs:  # pytest shows the captured warnings of a failed test only
                log.warning("replica logs:\n%s", log_tails(bots))


@asynccontextmanager
async def replica_set(
    count: int,
    slack: FakeSlackApi,
    aiml: FakeAimlApi,
    workdir: Path,
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[ReplicaSet]:
    """`count` replicas of the bot on a fresh PostgreSQL database, behind a new Balancer."""
    started = time.monotonic()
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    async with fresh_database("postgres", workdir) as db_url:
        env = bot_environment(db_url, slack.api_url, aiml.base_url, dict(extra_env or {}))
        async with running_replicas(count, env, workdir) as bots, AsyncExitStack() as stack:
            balancer = Balancer([b.port for b in bots])
            await balancer.start()
            stack.push_async_callback(balancer.stop)
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=balancer.url, timeout=30.0))
            yield ReplicaSet(bots, balancer, db_url, env, time.monotonic() - started, http)
