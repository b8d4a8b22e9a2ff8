"""A bounded append-only JSONL file of writes the database could not take yet (ledger rows first).

Why a file rather than longer retries in memory: an outage can outlast any retry budget, and the
process may be restarted or stopped meanwhile; a row on disk survives both and is replayed at the next
start. Several processes may share one spool directory (`python -m bot chat` through `docker exec`,
or `docker compose --scale`): an exclusive `fcntl.flock` on a lock file beside the spool is held
around every append and around a whole read-apply-rewrite, so no process deletes a line it did not
apply or overwrites one another appended. flock is POSIX-only, as is the image.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

SPOOL_FILE = "usage-spool.jsonl"
LOCK_FILE = "usage-spool.lock"
# Lines the database refused for good (not for being away): kept for an operator, never replayed.
REJECTED_FILE = "usage-spool.rejected"


class SpoolFull(Exception):
    """The spool holds `max_rows` already, or the file cannot be written."""


class SpoolBatch:
    """The spool's lines, held under the lock while the caller applies them oldest first."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.done = 0  # how many of the oldest lines are applied or rejected: removed on exit
        self.rejected: list[str] = []

    def reject(self, line: str) -> None:
        """Move `line` aside (the caller still counts it in `done`)."""
        self.rejected.append(line)


class Spool:
    def __init__(self, directory: Path, max_rows: int) -> None:
        self.path = directory / SPOOL_FILE
        self.rejected_path = directory / REJECTED_FILE
        self._lock_path = directory / LOCK_FILE
        self._max_rows = max_rows
        self._rows: int | None = None  # counted on first use, kept up to date after

    def __len__(self) -> int:
        if self._rows is None:
            self._rows = len(self._lines())
        return self._rows

    def append(self, record: dict[str, Any]) -> None:
        """Add one record as one line (one write with O_APPEND, so a crash leaves whole lines).
        Blocks while another holder of the lock replays: call it off the event loop."""
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        try:
            with self._locked():
                rows = len(self._lines())  # under the lock: other processes' lines count too
                if rows >= self._max_rows:
                    self._rows = rows
                    raise SpoolFull(f"{self.path} holds {self._max_rows} rows already")
                _append(self.path, line)
        except OSError as exc:
            raise SpoolFull(f"cannot write {self.path}: {exc}") from exc
        self._rows = rows + 1

    def reject(self, line: str) -> None:
        """Keep a line the database refused for good in the rejected file (never replayed)."""
        with self._locked():
            _append(self.rejected_path, (line + "\n").encode())

    def lines(self) -> list[str]:
        """Every spooled line, oldest first (a line may be corrupt: the reader decides)."""
        return self._lines()

    @asynccontextmanager
    async def claim(self) -> AsyncIterator[SpoolBatch]:
        """Hold the lock while the caller applies the lines; on a normal exit remove the first
        `done` (and only when there are some: a replay that applied nothing rewrites nothing)."""
        fd = await self._lock_off_loop()
        try:
            batch = SpoolBatch(await asyncio.to_thread(self._lines))
            yield batch
        except BaseException:
            os.close(fd)  # releases the flock; nothing is removed
            raise
        # Shielded, and the lock released by the thread itself: a cancellation here cannot let
        # another process append while the rewrite is still under way.
        await asyncio.shield(asyncio.to_thread(self._settle_then_unlock, batch, fd))

    def _settle_then_unlock(self, batch: SpoolBatch, fd: int) -> None:
        try:
            self._settle(batch)
        finally:
            os.close(fd)

    def _settle(self, batch: SpoolBatch) -> None:
        if batch.rejected:
            _append(self.rejected_path, "".join(line + "\n" for line in batch.rejected).encode())
        if batch.done == 0:
            self._rows = len(batch.lines)
            return
        rest = batch.lines[batch.done :]
        if not rest:
            self.path.unlink(missing_ok=True)
        else:
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text("".join(line + "\n" for line in rest), encoding="utf-8")
            os.replace(temporary, self.path)
        self._rows = len(rest)

    async def _lock_off_loop(self) -> int:
        fd = self._open_lock()
        locking = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX))
        try:
            await asyncio.shield(locking)
        except asyncio.CancelledError:
            # The thread may still take the lock: closing the descriptor once it has releases it.
            locking.add_done_callback(lambda _: os.close(fd))
            raise
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = self._open_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _open_lock(self) -> int:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)

    def _lines(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.split("\n") if line.strip()]


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
