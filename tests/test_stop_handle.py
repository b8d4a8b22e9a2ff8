"""The domain's stop handle: the first stop wins, a finished answer stays finished, shutdown still
cancels."""

from __future__ import annotations

import asyncio

import pytest

from bot.conversation.stop import StopHandle, Stopped, StopRequest, unless_stopped


async def test_a_stop_cancels_the_work_at_once_and_names_who_stopped_it():
    handle, closed = StopHandle(), asyncio.Event()

    async def stream() -> str:
        try:
            await asyncio.sleep(60)
        finally:
            closed.set()  # as the upstream stream closes its connection
        return "never"

    asyncio.get_running_loop().call_later(0.05, handle.stop, StopRequest("ada"))
    with pytest.raises(Stopped) as stopped:
        await asyncio.wait_for(unless_stopped(stream(), handle), 2)
    assert stopped.value.request == StopRequest("ada")
    assert closed.is_set()


async def test_only_the_first_stop_counts():
    handle = StopHandle()
    assert handle.stop(StopRequest("ada"))
    assert not handle.stop(StopRequest("grace"))
    assert handle.requested == StopRequest("ada")


async def test_work_that_finished_keeps_its_result_even_when_a_stop_comes_at_the_same_time():
    handle = StopHandle()

    async def finished() -> str:
        handle.stop(StopRequest("ada"))  # the press lands as the last chunk arrives
        return "the whole answer"

    assert await unless_stopped(finished(), handle) == "the whole answer"


async def test_errors_of_the_work_come_through_unchanged():
    async def failing() -> None:
        raise ValueError("upstream broke")

    with pytest.raises(ValueError, match="upstream broke"):
        await unless_stopped(failing(), StopHandle())


async def test_cancelling_the_caller_cancels_the_work_rather_than_stopping_it():
    handle, cancelled = StopHandle(), asyncio.Event()

    async def stream() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    caller = asyncio.create_task(unless_stopped(stream(), handle))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert cancelled.is_set()
    assert handle.requested is None
