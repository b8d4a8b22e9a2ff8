"""The real bot as a child process (`python -m bot run`, HTTP mode) on a fresh database.

Everything it needs comes from environment variables (the child runs in a temporary directory, so no
`.env` file leaks in); its log goes to a file that is scanned for errors afterwards. CPU time and peak
RSS are read from /proc while the child is alive.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from bot.settings import Settings

SIGNING_SECRET = "bench-signing-secret"
BOT_TOKEN = "xoxb-bench"
AIMLAPI_KEY = "bench-key"
POSTGRES_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_ERROR_LINE = re.compile(r'"level": "(error|critical|exception)"|Traceback \(most recent call last\)')


@asynccontextmanager
async def fresh_database(kind: str, workdir: Path) -> AsyncIterator[str]:
    """A new, empty database URL: a SQLite file in `workdir`, or a new PostgreSQL database (dropped after)."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        return
    name = f"bench_{uuid.uuid4().hex[:12]}"
    await _postgres_admin(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        await _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _postgres_admin(statement: str) -> None:
    engine = create_async_engine(
        POSTGRES_ADMIN_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args={"timeout": 5}
    )
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@dataclass
class LogScan:
    errors: list[str] = field(default_factory=list)  # error/critical lines and tracebacks (first few)
    error_count: int = 0
    warning_count: int = 0
    warnings_by_event: dict[str, int] = field(default_factory=dict)


@dataclass
class BotProcess:
    process: asyncio.subprocess.Process
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the child so far (/proc/<pid>/stat fields 14 and 15)."""
        raw = Path(f"/proc/{self.pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on; comm may hold spaces
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def peak_rss_mb(self) -> float:
        """VmHWM: the child's peak resident set size so far."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    async def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM (the bot drains and exits); SIGKILL after `grace` seconds. Returns the exit code."""
        if self.process.returncode is None:
            with suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                with suppress(ProcessLookupError):
                    self.process.kill()
                await asyncio.wait_for(self.process.wait(), 5.0)
        return self.process.returncode

    def scan_log(self, keep: int = 5) -> LogScan:
        scan = LogScan()
        if not self.log_path.exists():
            return scan
        for line in self.log_path.read_text(errors="replace").splitlines():
            if _ERROR_LINE.search(line):
                scan.error_count += 1
                if len(scan.errors) < keep:
                    scan.errors.append(line[:400])
            elif '"level": "warning"' in line:
                scan.warning_count += 1
                event = _json_field(line, "event") or "?"
                scan.warnings_by_event[event[:60]] = scan.warnings_by_event.get(event[:60], 0) + 1
        return scan


class CpuMeter:
    """CPU seconds spent between start() and stop(): by the bot, by this (bench) process, and by the
    rest of the machine. Other work on a shared machine skews latencies; the JSON shows how much."""

    def __init__(self, bot: BotProcess) -> None:
        self._bot = bot
        self._start = (0.0, 0.0, 0.0, 0.0)

    def _now(self) -> tuple[float, float, float, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return (time.monotonic(), self._bot.cpu_seconds(), own.ru_utime + own.ru_stime, _host_busy_seconds())

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> dict[str, float]:
        end = self._now()
        wall, bot, bench, host = (b - a for a, b in zip(self._start, end, strict=True))
        return {
            "wall_s": round(wall, 2),
            "bot_s": round(bot, 2),
            "bench_s": round(bench, 2),
            "other_processes_s": round(max(0.0, host - bot - bench), 2),
            "cores": os.cpu_count() or 1,
        }


def _host_busy_seconds() -> float:
    """All CPUs' non-idle time since boot, from the first line of /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def _json_field(line: str, name: str) -> str | None:
    try:
        value = json.loads(line).get(name)
    except (ValueError, AttributeError):
        return None
    return None if value is None else str(value)


def bot_environment(
    database_url: str, slack_url: str, aiml_url: str, extra: Mapping[str, str]
) -> dict[str, str]:
    """The child's environment: ours minus every bot setting, plus the bench's settings."""
    settings_vars = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in settings_vars}
    env.update(
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=slack_url,
        AIMLAPI_KEY=AIMLAPI_KEY,
        AIMLAPI_BASE_URL=aiml_url,
        DATABASE_URL=database_url,
        HOST="127.0.0.1",
        PORT="0",
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
        SHUTDOWN_GRACE_SECONDS="5",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@asynccontextmanager
async def running_bot(
    workdir: Path, env: Mapping[str, str], *, start_within: float = 60.0
) -> AsyncIterator[BotProcess]:
    """Start `python -m bot run`, wait until /healthz answers 200, stop it (SIGTERM) on exit."""
    log_path = workdir / "bot.log"
    with log_path.open("wb") as log, (workdir / "bot.stdout").open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run", cwd=workdir, env=dict(env), stdout=out, stderr=log
        )
    bot: BotProcess | None = None
    try:
        port = await _wait_for_port(process, log_path, start_within)
        bot = BotProcess(process, port, log_path)
        await _wait_healthy(bot, start_within)
        yield bot
    finally:
        if bot is None:
            bot = BotProcess(process, 0, log_path)
        await bot.stop()


async def _wait_for_port(process: asyncio.subprocess.Process, log_path: Path, within: float) -> int:
    """The port from the bot's `bot running` log line (PORT=0 lets the OS pick a free one)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.returncode is not None:
            tail = _read(log_path)[-2000:]
            raise RuntimeError(f"the bot exited with {process.returncode} at start-up:\n{tail}")
        port = _port_from_log(_read(log_path))
        if port is not None:
            return port
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the bot did not start within {within:.0f}s; see {log_path}")


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _port_from_log(log: str) -> int | None:
    for line in log.splitlines():
        if '"bot running"' in line:
            port = _json_field(line, "port")
            if port and port.isdigit():
                return int(port)
    return None


async def _wait_healthy(bot: BotProcess, within: float) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=bot.url, timeout=2.0) as http:
        while time.monotonic() < deadline:
            with suppress(httpx.HTTPError):
                if (await http.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"/healthz did not answer 200 within {within:.0f}s")
