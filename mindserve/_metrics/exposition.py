"""The master's Prometheus metrics: one registry per master, filled at scrape time from the request counts of
every door (mindserve._metrics.requests) and what the workers report (mindserve._metrics.worker_stats).

No prometheus_client objects sit on the request path: the counts live in plain structures the master loop
updates, and :class:`ServingCollector` turns them into metric families when ``/metrics`` is read.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Iterator, Optional, Union

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

import mindserve
from mindserve._frontends import stream_memory
from mindserve._metrics.histogram import Histogram
from mindserve._metrics.totals import MethodTotals, add_totals

if TYPE_CHECKING:
    from mindserve._dispatch.dispatcher import Dispatcher

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus's text format
NS = 1e-9
_MODEL = ["servable", "version", "method"]
WorkerTotals = dict[tuple[str, int], dict[Union[int, str], dict[str, MethodTotals]]]  # by device id or "python-<k>"
# A scrape reuses the workers' totals asked for less than this long ago, and scrapes that come while they are
# being asked for wait for that one answer: a storm of scrapes costs the master and the workers one question a
# second, not one a scrape. (The master's own request counts are read live at every scrape.)
WORKER_TOTALS_MAX_AGE_S = 1.0


def _buckets(histogram: Histogram, scale: float = 1.0) -> list[tuple[str, float]]:
    bounds = [repr(round(b * scale, 9)) for b in histogram.bounds] + ["+Inf"]
    return list(zip(bounds, histogram.cumulative()))


class ServingCollector(Collector):
    """Every mindserve metric, from the dispatcher's counts and the workers' last reported statistics."""

    def __init__(self, dispatcher: "Dispatcher"):
        self._dispatcher = dispatcher
        self.worker_totals: WorkerTotals = {}  # set by ServerMetrics.refresh before each scrape

    def collect(self) -> Iterator[Metric]:
        yield from self._build_info()
        yield from self._requests()
        yield from self._executions()
        yield from self._workers()
        yield from self._streams()

    def _build_info(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("mindserve_build_info", "The mindserve release serving, always 1", labels=["version"])
        info.add_metric([mindserve.__version__], 1)
        yield info

    def _requests(self) -> Iterator[Metric]:
        labels = [*_MODEL, "protocol"]
        success = CounterMetricFamily(
            "mindserve_request_success", "Inference requests answered successfully", labels=labels
        )
        failure = CounterMetricFamily(
            "mindserve_request_failure", "Inference requests that failed, by reason", labels=[*labels, "reason"]
        )
        duration = HistogramMetricFamily(
            "mindserve_request_duration_seconds",
            "Inference request duration in the master, from admission to the answer",
            labels=labels,
        )
        for key, series in sorted(self._dispatcher.requests.series.items()):
            values = list(key)
            success.add_metric(values, series.success)
            for reason, count in sorted(series.failures.items()):
                failure.add_metric([*values, reason], count)
            duration.add_metric(values, _buckets(series.duration, NS), series.duration.total * NS)
        yield from (success, failure, duration)

    def _executions(self) -> Iterator[Metric]:
        inferences = CounterMetricFamily("mindserve_inference_count", "Instances run by the workers", labels=_MODEL)
        executions = CounterMetricFamily(
            "mindserve_execution_count",
            "Method executions (batches) run by the workers; inference_count over "
            "execution_count is the mean batch size",
            labels=[*_MODEL, "device"],
        )
        queue = HistogramMetricFamily(
            "mindserve_queue_duration_seconds",
            "Time a request waited in its worker's queue before its batch started",
            labels=_MODEL,
        )
        stages = HistogramMetricFamily(
            "mindserve_stage_duration_seconds",
            "Duration of each stage of a method, per execution; stage is its position and kind (python or model)",
            labels=[*_MODEL, "stage"],
        )
        batches = HistogramMetricFamily("mindserve_batch_size", "Instances per method execution", labels=_MODEL)
        for (servable, version), devices in sorted(self.worker_totals.items()):
            merged: dict[str, MethodTotals] = {}
            for device, methods in sorted(devices.items(), key=lambda item: _device_order(item[0])):
                add_totals(merged, methods)
                for method, totals in sorted(methods.items()):
                    executions.add_metric([servable, str(version), method, str(device)], totals.executions)
            for method, totals in sorted(merged.items()):
                values = [servable, str(version), method]
                inferences.add_metric(values, totals.inferences)
                queue.add_metric(values, _buckets(totals.queue, NS), totals.queue.total * NS)
                for stage, histogram in sorted(totals.stages.items()):
                    stages.add_metric([*values, stage], _buckets(histogram, NS), histogram.total * NS)
                batches.add_metric(values, _buckets(totals.batch), totals.batch.total)
        yield from (inferences, executions, queue, stages, batches)

    def _workers(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "mindserve_pending_requests",
            "Requests handed to the workers of a servable version and not yet answered",
            labels=["servable", "version"],
        )
        for (servable, version), count in sorted(self._dispatcher.pending().items()):
            pending.add_metric([servable, str(version)], count)
        up = GaugeMetricFamily(
            "mindserve_worker_up",
            "1 while the worker of a servable version on a device is alive "
            "(device python-<k>: a Python-stage worker of num_parallel_workers)",
            labels=["servable", "version", "device"],
        )
        restarts = CounterMetricFamily(
            "mindserve_worker_restarts", "Workers replaced after they died", labels=["servable", "version", "device"]
        )
        for state in sorted(
            self._dispatcher.worker_states(), key=lambda s: (s.servable, s.version, _device_order(s.device_id))
        ):
            values = [state.servable, str(state.version), str(state.device_id)]
            up.add_metric(values, 1 if state.up else 0)
            restarts.add_metric(values, state.restarts)
        yield from (pending, up, restarts)

    def _streams(self) -> Iterator[Metric]:
        memory = stream_memory.server_memory()
        yield GaugeMetricFamily(
            "mindserve_stream_memory_bytes",
            "Memory the streams hold (answers not yet sent, media frames not yet run), within max_stream_memory_mb",
            value=memory.used,
        )
        yield GaugeMetricFamily(
            "mindserve_stream_memory_limit_bytes", "max_stream_memory_mb, in bytes", value=memory.limit
        )


def _device_order(label: Union[int, str]) -> tuple:
    """Device workers by id, then the Python-stage workers ("python-<k>") by k."""
    if isinstance(label, int):
        return (0, label, "")
    number = label.rpartition("-")[2]
    return (1, int(number) if number.isdigit() else 0, label)


class ServerMetrics:
    """The master's metrics registry and what fills it."""

    def __init__(self, dispatcher: "Dispatcher", worker_totals_max_age_s: float = WORKER_TOTALS_MAX_AGE_S):
        self._dispatcher = dispatcher
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = ServingCollector(dispatcher)
        self.registry.register(self.collector)
        self._max_age_s = worker_totals_max_age_s
        self._asked_at = -float("inf")  # (time.monotonic) when the totals in the collector were asked for
        self._asking: Optional[asyncio.Task] = None  # a question to the workers under way

    async def refresh(self) -> WorkerTotals:
        """The workers' statistics, asked for now unless the last answer is younger than the maximum age (the
        request counts are the master's own, always current)."""
        if time.monotonic() - self._asked_at >= self._max_age_s:
            if self._asking is None:
                self._asking = asyncio.get_running_loop().create_task(self._ask())
            # shielded: a scraper that leaves does not cancel the question the others wait for
            await asyncio.shield(self._asking)
        return self.collector.worker_totals

    async def _ask(self) -> None:
        asked_at = time.monotonic()
        try:
            self.collector.worker_totals = await self._dispatcher.worker_stats()
            self._asked_at = asked_at
        finally:
            self._asking = None

    async def exposition(self, refresh: bool = True) -> bytes:
        """The text format of every metric, as of now (the workers' part at most the maximum age old)."""
        if refresh:
            await self.refresh()
        return generate_latest(self.registry)
