"""One method's statistics as a worker keeps them (mindserve._metrics.worker_stats) and as the master reads and
adds them up. A worker runs user code, so a snapshot is the worker's word: anything that is not the expected
shape is dropped, never trusted to index or to crash a scrape."""

from __future__ import annotations

from typing import Any, Optional

from mindserve._metrics.histogram import BATCH_BOUNDS, DURATION_BOUNDS_NS, Histogram

STAGES_LIMIT = 64  # stage labels kept per method: a servable has a handful of stages
BATCH_SIZES_LIMIT = 256  # Triton reports statistics per batch size; more distinct sizes fold into the largest


def _count(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _histogram(value: Any, bounds: tuple[int, ...]) -> Optional[Histogram]:
    if not (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], list)
        and len(value[0]) == len(bounds) + 1
        and _count(value[1]) is not None
    ):
        return None
    counts = [_count(n) for n in value[0]]
    if any(n is None for n in counts):
        return None
    histogram = Histogram(bounds)
    histogram.add(counts, value[1])  # type: ignore[arg-type]  # checked: no None left
    return histogram


class MethodTotals:
    """One method's worker statistics: queue waits, stage durations and batch sizes as histograms, executions,
    instances and jobs, and the nanoseconds spent reading jobs, running stages and writing replies (summed over
    jobs, and per batch size)."""

    def __init__(self) -> None:
        self.queue = Histogram(DURATION_BOUNDS_NS)
        self.stages: dict[str, Histogram] = {}
        self.batch = Histogram(BATCH_BOUNDS)
        self.executions = 0
        self.inferences = 0
        self.jobs = 0
        self.compute = [0, 0, 0]  # ns over jobs: inputs, stages, replies
        self.by_batch: dict[int, list[int]] = {}  # instances -> [executions, input ns, infer ns, output ns]

    def add(self, other: "MethodTotals") -> None:
        self.queue.add(other.queue.counts, other.queue.total)
        for label, histogram in other.stages.items():
            mine = self.stages.get(label)
            if mine is None:
                if len(self.stages) >= STAGES_LIMIT:
                    continue
                mine = self.stages[label] = Histogram(DURATION_BOUNDS_NS)
            mine.add(histogram.counts, histogram.total)
        self.batch.add(other.batch.counts, other.batch.total)
        self.executions += other.executions
        self.inferences += other.inferences
        self.jobs += other.jobs
        self.compute = [a + b for a, b in zip(self.compute, other.compute)]
        for size, entry in other.by_batch.items():
            mine_entry = self.by_batch.get(size)
            if mine_entry is None:
                if len(self.by_batch) >= BATCH_SIZES_LIMIT:
                    continue
                mine_entry = self.by_batch[size] = [0, 0, 0, 0]
            for i, n in enumerate(entry):
                mine_entry[i] += n

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON, what a worker sends (``from_snapshot`` reads it back)."""
        return {
            "q": self.queue.snapshot(),
            "s": {k: h.snapshot() for k, h in self.stages.items()},
            "b": self.batch.snapshot(),
            "x": self.executions,
            "i": self.inferences,
            "j": self.jobs,
            "c": list(self.compute),
            "bb": {str(k): list(v) for k, v in self.by_batch.items()},
        }

    @classmethod
    def from_snapshot(cls, value: Any) -> Optional["MethodTotals"]:
        """A method's entry of a worker's snapshot, checked; None when it is not one."""
        if not isinstance(value, dict):
            return None
        totals = cls()
        queue, batch = _histogram(value.get("q"), DURATION_BOUNDS_NS), _histogram(value.get("b"), BATCH_BOUNDS)
        counts = [_count(value.get(k)) for k in ("x", "i", "j")]
        compute = value.get("c")
        stages, by_batch = value.get("s"), value.get("bb")
        if (
            queue is None
            or batch is None
            or None in counts
            or not isinstance(stages, dict)
            or not isinstance(by_batch, dict)
            or not isinstance(compute, list)
            or len(compute) != 3
            or any(_count(n) is None for n in compute)
        ):
            return None
        totals.queue, totals.batch = queue, batch
        totals.executions, totals.inferences, totals.jobs = counts  # type: ignore[assignment]  # checked
        totals.compute = list(compute)
        for label, entry in list(stages.items())[:STAGES_LIMIT]:
            histogram = _histogram(entry, DURATION_BOUNDS_NS)
            if histogram is None or not isinstance(label, str) or len(label) > 32:
                return None
            totals.stages[label] = histogram
        for size, entry in list(by_batch.items())[:BATCH_SIZES_LIMIT]:
            if not (
                isinstance(size, str)
                and size.isdigit()
                and isinstance(entry, list)
                and len(entry) == 4
                and all(_count(n) is not None for n in entry)
            ):
                return None
            totals.by_batch[int(size)] = list(entry)
        return totals


def read_snapshot(snapshot: Any, methods: Any) -> dict[str, MethodTotals]:
    """A worker's snapshot as totals per method, only for ``methods`` (those the servable reported at start:
    a method name is a label value, so only registered names may become one)."""
    totals: dict[str, MethodTotals] = {}
    if not isinstance(snapshot, dict):
        return totals
    for method, value in snapshot.items():
        if method in methods:
            read = MethodTotals.from_snapshot(value)
            if read is not None:
                totals[method] = read
    return totals


def add_totals(into: dict[str, MethodTotals], other: dict[str, MethodTotals]) -> None:
    for method, totals in other.items():
        mine = into.get(method)
        if mine is None:
            mine = into[method] = MethodTotals()
        mine.add(totals)
