"""What a worker measures of its own work, per method: how long jobs waited in its queue, how long each stage
of each execution took, how many instances each execution ran. The worker keeps running totals; the master
asks for them over the control socket when it is scraped (``snapshot``), so no file and no second registry
is involved, and nothing extra crosses per request.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

from mindserve._metrics.histogram import DURATION_BOUNDS_NS, Histogram
from mindserve._metrics.totals import BATCH_SIZES_LIMIT, MethodTotals


def stage_label(index: int, is_model: bool) -> str:
    """How metrics name a stage: its position in the method (from 1) and its kind, ``"2:model"``."""
    return f"{index}:{'model' if is_model else 'python'}"


class WorkerStats:
    """Running totals of one worker, written by its serving thread and read by its control thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._methods: dict[str, MethodTotals] = {}

    def record(
        self,
        method: str,
        queued_ns: Sequence[int],
        stages: Sequence[tuple[str, int]],
        instances: int,
        input_ns: int,
        output_ns: int,
        whole: bool = True,
    ) -> None:
        """One execution of ``method``: the queue wait of each of its jobs, each stage's duration, the instances
        it ran, and the time spent reading the jobs and writing the replies. A segment of a method that runs
        over several processes (num_parallel_workers) is recorded with ``whole`` False except for the last one,
        so that executions, instances and batch sizes count each method execution once."""
        jobs = len(queued_ns)
        infer_ns = sum(ns for _, ns in stages)
        with self._lock:
            stats = self._methods.get(method)
            if stats is None:
                stats = self._methods[method] = MethodTotals()
            for ns in queued_ns:
                stats.queue.observe(ns)
            for label, ns in stages:
                histogram = stats.stages.get(label)
                if histogram is None:
                    histogram = stats.stages[label] = Histogram(DURATION_BOUNDS_NS)
                histogram.observe(ns)
            if not whole:
                return
            stats.batch.observe(instances)
            stats.executions += 1
            stats.inferences += instances
            stats.jobs += jobs
            compute = stats.compute
            compute[0] += input_ns * jobs
            compute[1] += infer_ns * jobs
            compute[2] += output_ns * jobs
            size = (
                instances
                if instances in stats.by_batch or len(stats.by_batch) < BATCH_SIZES_LIMIT
                else max(stats.by_batch)
            )
            entry = stats.by_batch.get(size)
            if entry is None:
                entry = stats.by_batch[size] = [0, 0, 0, 0]
            entry[0] += 1
            entry[1] += input_ns
            entry[2] += infer_ns
            entry[3] += output_ns

    def snapshot(self) -> dict[str, Any]:
        """The totals so far, as plain JSON (``MethodTotals.from_snapshot`` reads each method's back)."""
        with self._lock:
            return {method: totals.snapshot() for method, totals in self._methods.items()}
