"""Writes a completion's ledger row and its reply's final text: now, or through the spool once the
database is back, each exactly once (rows are keyed by the upstream request id)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.llm.types import CompletionResult
from bot.storage import conversations as repo
from bot.storage import quotas
from bot.storage.db import UNAVAILABLE, disconnected, error_reason
from bot.storage.models import MessageStatus, utcnow
from bot.storage.spool import Spool, SpoolFull
from bot.storage.usage import UsageEntry, store_usage

log = logging.getLogger(__name__)


class LedgerEvents(Protocol):
    """Counted by the operator's metrics: rows put in the spool, rows lost."""

    def usage_row_spooled(self) -> None: ...

    def usage_row_dropped(self) -> None: ...


class Ledger:
    """`completion_ended` as soon as the upstream call ends, `reply_ended` once the reply is shown."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        spool: Spool | None,
        *,
        events: LedgerEvents | None = None,
        replay_every: float = 2.0,
    ) -> None:
        self._sessions = sessions
        self._spool = spool
        self._events = events
        self._replay_every = replay_every
        self._replaying = asyncio.Lock()
        self._replayer: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Writes waiting in the spool for the database."""
        return len(self._spool) if self._spool is not None else 0

    async def completion_ended(
        self,
        entry: UsageEntry,
        message_id: int,
        content: str,
        *,
        refs: Sequence[str],
        parts: Sequence[dict[str, object]],
        lease_until: datetime,
        hold: int | None = None,
    ) -> None:
        """The usage row in its own transaction first (one bad content cannot take the billing row
        with it), then the whole answer saved on the still-streaming reply.

        `hold`: the turn's quota reservation, dropped in the row's transaction, so the reported cost
        replaces the estimate at once (never both counted, never neither) and the turn's end writes
        nothing more. A row that goes to the spool goes without it, and the hold expires instead: it
        counts for the row while the database is away, and by the replay its id may belong to
        another hold (SQLite reuses ids).
        """
        record: dict[str, Any] = {
            "kind": "usage",
            "entry": asdict(entry),
            "created_at": utcnow().isoformat(),
        }
        if hold is not None:
            record["hold"] = hold  # dropped now, or left to expire (see above)
        await self._write(record, "the ledger row")
        try:
            async with self._sessions.begin() as session:
                await repo.checkpoint_message(
                    session,
                    message_id,
                    content=content,
                    slack_refs=refs,
                    slack_parts=parts,
                    lease_until=lease_until,
                )
        except UNAVAILABLE as exc:
            # Not spooled: the final text follows in `reply_ended`, which spools when it must.
            log.warning("could not save the answer before it is shown: %s", error_reason(exc))

    async def usage_row(self, entry: UsageEntry) -> None:
        """The ledger row of a completion that ends no reply (a tool round, a summary): now, or spooled."""
        record: dict[str, Any] = {"kind": "usage", "entry": asdict(entry), "created_at": utcnow().isoformat()}
        await self._write(record, "the ledger row")

    async def reply_ended(
        self,
        message_id: int,
        content: str,
        status: MessageStatus,
        *,
        refs: Sequence[str],
        parts: Sequence[dict[str, object]],
    ) -> None:
        """Store the reply's final text and status (only while it is still `streaming`)."""
        record: dict[str, Any] = {
            "kind": "finish",
            "message_id": message_id,
            "content": content,
            "status": status.value,
            "refs": list(refs),
            "parts": [dict(p) for p in parts],
        }
        await self._write(record, "the finished reply")

    async def _write(self, record: dict[str, Any], what: str) -> None:
        """Apply `record` now; spool it while the database is away, set it aside if it is refused."""
        try:
            await self._apply(record)
        except UNAVAILABLE as exc:
            if not disconnected(exc):
                await self._reject(record, exc)
            else:
                log.warning("could not store %s now (%s); spooling it", what, error_reason(exc))
                record.pop("hold", None)  # it expires instead (see completion_ended)
                await self._put(record)

    def start(self) -> None:
        """Replay what an earlier run left in the spool, in the background."""
        if self.pending:
            self._wake()

    async def aclose(self, last_try: float = 10.0) -> None:
        """Stop replaying after one last try; what is still left stays on disk for the next start."""
        if self._replayer is not None:
            self._replayer.cancel()
            await asyncio.gather(self._replayer, return_exceptions=True)
        if self.pending:
            try:
                await asyncio.wait_for(self.replay(), last_try)
            except TimeoutError:
                log.warning("%d spooled writes wait for the next start", self.pending)

    async def replay(self) -> int:
        """Apply spooled writes oldest first until the database is away; a write it refuses for good
        is moved aside rather than blocking every later one. Return how many are left."""
        if self._spool is None:
            return 0
        async with self._replaying, self._spool.claim() as batch:
            for line in batch.lines:
                try:
                    record = json.loads(line)
                    await self._apply(record)
                except UNAVAILABLE as exc:
                    if disconnected(exc):
                        log.warning("spool replay waits for the database: %s", error_reason(exc))
                        break
                    batch.reject(line)
                    self._refused(record, exc)
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    batch.reject(line)
                    self._drop(f"a corrupt spool line ({exc.__class__.__name__})", counted=True)
                batch.done += 1
        if batch.done:
            log.info("replayed %d spooled writes; %d left", batch.done, len(self._spool))
        return len(self._spool)

    async def _apply(self, record: dict[str, Any]) -> None:
        if record["kind"] == "usage":
            entry = UsageEntry(**record["entry"])
            created_at = datetime.fromisoformat(record["created_at"])
            hold = record.get("hold")
            try:
                async with self._sessions.begin() as session:
                    await store_usage(session, entry, created_at)
                    if hold is not None:
                        await quotas.release(session, int(hold))
            except IntegrityError:
                # The conversation was deleted meanwhile: the ledger keeps the row without it.
                async with self._sessions.begin() as session:
                    await store_usage(session, _without_conversation(entry), created_at)
                    if hold is not None:
                        await quotas.release(session, int(hold))
        elif record["kind"] == "finish":
            async with self._sessions.begin() as session:
                stored = await repo.finish_message(
                    session,
                    int(record["message_id"]),
                    content=str(record["content"]),
                    status=MessageStatus(record["status"]),
                    slack_refs=list(record["refs"]),
                    slack_parts=list(record["parts"]),
                )
            if not stored:
                log.warning(
                    "reply %s was already ended (recovered); its final text is not stored",
                    record["message_id"],
                )
        else:
            raise KeyError(record["kind"])

    async def _put(self, record: dict[str, Any]) -> None:
        usage = record["kind"] == "usage"
        what = "ledger row" if usage else "finished reply"
        if self._spool is None:
            self._drop(f"a {what} (no spool configured)", counted=usage)
            return
        try:
            # Off the event loop: the append waits for the lock while another process replays.
            await asyncio.to_thread(self._spool.append, record)
        except SpoolFull as exc:
            self._drop(f"a {what}: {exc}", counted=usage)
            return
        if usage and self._events is not None:
            self._events.usage_row_spooled()
        self._wake()

    async def _reject(self, record: dict[str, Any], exc: Exception) -> None:
        """A write the database refuses for good: kept beside the spool for an operator, never retried."""
        self._refused(record, exc)
        if self._spool is None:
            return
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        try:
            await asyncio.to_thread(self._spool.reject, line)
        except OSError as reason:
            log.error("could not keep the refused write in %s: %s", self._spool.rejected_path, reason)

    def _refused(self, record: dict[str, Any], exc: Exception) -> None:
        usage = record.get("kind") == "usage"
        what = "ledger row" if usage else "finished reply"
        # The reason only: the driver's message may quote the parameters, i.e. the reply's text.
        log.error(
            "the database refused a %s for good (%s); moved aside, not retried",
            what,
            type(getattr(exc, "orig", None) or exc).__name__,
        )
        if usage and self._events is not None:
            self._events.usage_row_dropped()

    def _drop(self, what: str, *, counted: bool) -> None:
        log.error("dropped %s; the database did not take it and it cannot be kept", what)
        if counted and self._events is not None:
            self._events.usage_row_dropped()

    def _wake(self) -> None:
        if self._replayer is None or self._replayer.done():
            self._replayer = asyncio.create_task(self._replay_until_empty(), name="ledger-spool")

    async def _replay_until_empty(self) -> None:
        while self.pending:
            await asyncio.sleep(self._replay_every)
            try:
                await self.replay()
            except Exception:  # the replayer must outlive any surprise; the rows stay on disk
                log.exception("spool replay failed")


def _without_conversation(entry: UsageEntry) -> UsageEntry:
    return UsageEntry(**{**asdict(entry), "conversation_id": None})


# Refused before any token: the API does not charge failed requests (a timeout may have been billed
# upstream, so its cost stays unknown).
_UNCHARGED = frozenset({"auth", "credits", "bad_request", "rate_limited", "unavailable"})


def completion_entry(
    where: tuple[str, str, str | None],
    conversation_id: int | None,
    model: str,
    result: CompletionResult,
    label: str,
) -> UsageEntry:
    """The ledger row of one upstream completion; `where` is (team, channel, user)."""
    usage = result.usage
    credits, usd = usage.credits_used, usage.usd_spent
    if label in _UNCHARGED and result.ttft_ms is None and credits is None:
        credits, usd = 0, 0.0
    team_id, channel_id, user_id = where
    return UsageEntry(
        team_id=team_id,
        channel_id=channel_id,
        user_id=user_id,
        conversation_id=conversation_id,
        model_requested=model,
        model_returned=result.model,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        credits_used=credits,
        usd_spent=usd,
        finish_reason=result.finish_reason,
        status=label,
        ttft_ms=result.ttft_ms,
        duration_ms=result.duration_ms,
        client_request_id=result.client_request_id,
        inference_id=result.inference_id,
    )
