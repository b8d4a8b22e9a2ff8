"""Percentiles, summaries and trend lines for the benchmark's samples (plain Python, no numpy)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between ranks; None without samples."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """n, p50, p95, p99, mean and max of durations given in seconds, reported in milliseconds.

    Every value counts: a NaN or infinite one raises instead of being dropped (a reply that never
    got somewhere goes through `spans_ms`, which counts it at its deadline)."""
    bad = [s for s in seconds if not math.isfinite(s)]
    if bad:
        raise ValueError(f"{len(bad)} of {len(seconds)} durations are not finite (e.g. {bad[0]})")
    ms = [s * 1000.0 for s in seconds]
    if not ms:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    return {
        "n": len(ms),
        "p50": _round(percentile(ms, 50)),
        "p95": _round(percentile(ms, 95)),
        "p99": _round(percentile(ms, 99)),
        "mean": _round(sum(ms) / len(ms)),
        "max": _round(max(ms)),
    }


@dataclass(frozen=True)
class Span:
    """One measure of one reply (or one chunk): from `start` until `end`, where the bench stopped
    waiting at `deadline`. `end` is NaN when it never happened; one after the deadline did not
    happen in time either. Times are `time.monotonic()` seconds."""

    start: float
    end: float
    deadline: float

    @property
    def never(self) -> bool:
        return not math.isfinite(self.end) or self.end > self.deadline

    @property
    def seconds(self) -> float:
        """The duration; one that never ended counts up to the deadline (so it is a lower bound)."""
        return (self.deadline if self.never else self.end) - self.start


def spans_ms(spans: Sequence[Span]) -> dict[str, Any]:
    """`summary_ms` over every span, with `never`: how many of them count at their deadline."""
    summary = summary_ms([s.seconds for s in spans])
    summary["never"] = sum(1 for s in spans if s.never)
    return summary


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys over xs; None with fewer than two distinct xs."""
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
    if len(pairs) < 2:
        return None
    mean_x = sum(x for x, _ in pairs) / len(pairs)
    mean_y = sum(y for _, y in pairs) / len(pairs)
    var = sum((x - mean_x) ** 2 for x, _ in pairs)
    if var == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in pairs) / var


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class LoopLag:
    """Measures how late this process's own event loop wakes up (the fakes run in it, so their
    timestamps are only as precise as this); start() before a scenario, stop() after it."""

    def __init__(self, period: float = 0.01, max_samples: int = 100_000) -> None:
        self._period, self._max = period, max_samples
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bench-loop-lag")

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return summary_ms(self.samples)

    async def _run(self) -> None:
        while len(self.samples) < self._max:
            expected = time.monotonic() + self._period
            await asyncio.sleep(self._period)
            self.samples.append(max(0.0, time.monotonic() - expected))
