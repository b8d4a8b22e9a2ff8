"""The spool shared by two processes (or two Spool objects on one directory): no line is lost."""

from __future__ import annotations

import asyncio
import json

from bot.storage.spool import Spool


def record(number: int) -> dict[str, object]:
    return {"kind": "usage", "n": number}


async def test_an_append_during_another_spools_replay_is_kept_after_that_replay_removes_its_lines(
    tmp_path,
):
    replaying, appending = Spool(tmp_path, max_rows=100), Spool(tmp_path, max_rows=100)
    replaying.append(record(1))
    appending.append(record(2))

    async with replaying.claim() as batch:
        late = asyncio.create_task(asyncio.to_thread(appending.append, record(3)))
        # Give the other writer every chance to slip in between the read and the rewrite.
        await asyncio.wait([late], timeout=0.5)
        assert [json.loads(line)["n"] for line in batch.lines] == [1, 2]
        batch.done = len(batch.lines)  # both applied
    await late

    assert [json.loads(line)["n"] for line in appending.lines()] == [3]


async def test_interleaved_appends_from_two_spools_and_a_replay_lose_no_row(tmp_path):
    first, second = Spool(tmp_path, max_rows=1000), Spool(tmp_path, max_rows=1000)
    applied: list[int] = []

    async def replay_all() -> None:
        for _ in range(20):
            async with first.claim() as batch:
                for line in batch.lines:
                    applied.append(json.loads(line)["n"])
                    await asyncio.sleep(0)  # the database write: other writers run meanwhile
                    batch.done += 1

    async def append(spool: Spool, numbers: range) -> None:
        for number in numbers:
            await asyncio.to_thread(spool.append, record(number))

    await asyncio.gather(replay_all(), append(first, range(0, 60)), append(second, range(100, 160)))
    async with first.claim() as batch:
        applied.extend(json.loads(line)["n"] for line in batch.lines)
        batch.done = len(batch.lines)

    assert sorted(applied) == [*range(0, 60), *range(100, 160)]
    assert first.lines() == []


async def test_a_replay_that_applies_nothing_does_not_rewrite_the_file(tmp_path):
    spool = Spool(tmp_path, max_rows=10)
    spool.append(record(1))
    before = spool.path.stat()

    async with spool.claim():
        pass  # the database was away: nothing applied

    after = spool.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len(spool) == 1
