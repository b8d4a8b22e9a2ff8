"""Counting what a turn reads back of its thread, for tests of the hot path's statements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


@contextmanager
def thread_reads(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SELECTs on conversations and messages that `engine` runs inside the block."""
    reads: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().startswith("SELECT") and (
            "FROM conversations" in statement or "FROM messages" in statement
        ):
            reads.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        yield reads
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
