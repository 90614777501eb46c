"""A histogram small enough to sit on the request path and to cross from a worker to the master: fixed bucket
bounds, a count per bucket and a sum, all integers (durations in nanoseconds), so that snapshots taken in
several processes add up exactly. The master turns the merged counts into Prometheus's cumulative buckets.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Sequence

# request, queue and stage durations: from 100 us (a small model's whole request) to 30 s
DURATION_BOUNDS_NS: tuple[int, ...] = tuple(
    int(s * 1e9)
    for s in (
        0.0001,
        0.00025,
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        30.0,
    )
)
# instances per model execution: 1, 2, 4, ... 256
BATCH_BOUNDS: tuple[int, ...] = tuple(1 << k for k in range(9))


class Histogram:
    """Observations counted by bucket: ``counts[i]`` holds those ``<= bounds[i]`` and above the bound before;
    the last entry those above every bound. Not thread-safe: each owner guards it its own way."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[int]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0  # the sum of the observations

    def observe(self, value: int) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def add(self, counts: Sequence[int], total: int) -> None:
        """Add another histogram's counts (of the same bounds) and sum."""
        if len(counts) != len(self.counts):
            raise ValueError("histograms of different buckets")
        for i, n in enumerate(counts):
            self.counts[i] += n
        self.total += total

    def snapshot(self) -> list:
        """``[counts, sum]``: plain JSON, what a worker sends."""
        return [list(self.counts), self.total]

    def cumulative(self) -> list[int]:
        """Prometheus's buckets: the count of observations at or below each bound, then the count of all."""
        running, out = 0, []
        for n in self.counts:
            running += n
            out.append(running)
        return out
