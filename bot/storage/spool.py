"""A bounded append-only JSONL file of writes the database could not take yet (ledger rows first).

Why a file rather than longer retries in memory: an outage can outlast any retry budget, and the
process may be restarted or stopped meanwhile; a row on disk survives both and is replayed at the next
start. One spool file belongs to one process (each replica its own directory or volume).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SPOOL_FILE = "usage-spool.jsonl"


class SpoolFull(Exception):
    """The spool holds `max_rows` already, or the file cannot be written."""


class Spool:
    def __init__(self, directory: Path, max_rows: int) -> None:
        self.path = directory / SPOOL_FILE
        self._max_rows = max_rows
        self._rows: int | None = None  # counted on first use, kept up to date after

    def __len__(self) -> int:
        if self._rows is None:
            self._rows = len(self._lines())
        return self._rows

    def append(self, record: dict[str, Any]) -> None:
        """Add one record as one line (one write with O_APPEND, so a crash leaves whole lines)."""
        if len(self) >= self._max_rows:
            raise SpoolFull(f"{self.path} holds {self._max_rows} rows already")
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SpoolFull(f"cannot write {self.path}: {exc}") from exc
        self._rows = len(self) + 1

    def lines(self) -> list[str]:
        """Every spooled line, oldest first (a line may be corrupt: the reader decides)."""
        return self._lines()

    def drop_first(self, count: int) -> None:
        """Remove the oldest `count` lines: rewrite to a temporary file, then replace atomically."""
        rest = self._lines()[count:]
        if not rest:
            self.path.unlink(missing_ok=True)
        else:
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text("".join(line + "\n" for line in rest), encoding="utf-8")
            os.replace(temporary, self.path)
        self._rows = len(rest)

    def _lines(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.split("\n") if line.strip()]
