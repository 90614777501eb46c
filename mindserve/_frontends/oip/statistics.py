"""Model statistics in Triton's shape (KServe/Triton ``ModelStatistics`` over gRPC, ``GET /v2/models[/{model}
[/versions/{v}]]/stats`` over REST), so that ``tritonclient``'s ``get_inference_statistics`` works unchanged.

What each field counts, for one model (servable method) version:

- ``success`` / ``fail``: inference requests answered, over every door and protocol, and their durations in the
  master (from admission to the answer);
- ``inference_count`` / ``execution_count``: instances run and method executions (batches) in the workers;
- ``queue``: each request's wait in its worker's queue; ``compute_input``, ``compute_infer``,
  ``compute_output``: per request, the time its execution spent reading the jobs, running the stages, writing
  the replies (Triton's per-request attribution);
- ``batch_stats``: the same three per execution, by batch size;
- ``last_inference``: milliseconds since the epoch of the last request (0: none yet).
Requests that named no served model are in no model's statistics (they are in the metrics, as ``unknown``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._errors import NotServed, clip
from mindserve._frontends.oip.models import find_model, version_number
from mindserve._metrics.totals import MethodTotals


@dataclass
class Duration:
    count: int = 0
    ns: int = 0


@dataclass
class BatchStatistics:
    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


@dataclass
class ModelStatistics:
    name: str
    version: str
    last_inference: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batch_stats: list[BatchStatistics] = field(default_factory=list)

    def to_json(self) -> dict:
        """The document of one model's statistics in the REST answer."""

        def duration(d: Duration) -> dict:
            return {"count": d.count, "ns": d.ns}

        empty = duration(Duration())
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": duration(self.success),
                "fail": duration(self.fail),
                "queue": duration(self.queue),
                "compute_input": duration(self.compute_input),
                "compute_infer": duration(self.compute_infer),
                "compute_output": duration(self.compute_output),
                "cache_hit": empty,
                "cache_miss": empty,
            },
            "batch_stats": [
                {
                    "batch_size": b.batch_size,
                    "compute_input": duration(b.compute_input),
                    "compute_infer": duration(b.compute_infer),
                    "compute_output": duration(b.compute_output),
                }
                for b in self.batch_stats
            ],
        }


async def model_statistics(dispatcher: Dispatcher, model_name: str, version_text: str) -> list[ModelStatistics]:
    """The statistics of a model's version (``version_text`` "" or "0": every served version), or of every
    model's every version for ``model_name`` "". NOT_FOUND for a model or version that is not served."""
    if model_name:
        model = find_model(dispatcher, model_name)
        versions = model.versions()
        version = version_number(model_name, version_text)
        if version:
            if version not in versions:
                raise NotServed(
                    f"Model '{clip(model_name)}' version {version} is not found, running versions: "
                    f"{', '.join(str(v) for v in versions)}"
                )
            versions = [version]
        wanted = [(model_name, model.servable, model.method, v) for v in versions]
    else:
        wanted = []
        for served in dispatcher.served():
            single = len(served.methods) == 1
            for method in sorted(served.methods):
                wanted.append(
                    (served.name if single else f"{served.name}.{method}", served.name, method, served.version)
                )
    workers = await dispatcher.worker_stats()
    return [
        _statistics(
            dispatcher, name, servable, method, version, _method_totals(workers.get((servable, version), {}), method)
        )
        for name, servable, method, version in wanted
    ]


def _method_totals(devices: dict[int, dict[str, MethodTotals]], method: str) -> Optional[MethodTotals]:
    """One method's totals summed over the devices' workers; None when no worker has run it."""
    found = [methods[method] for methods in devices.values() if method in methods]
    if not found:
        return None
    merged = MethodTotals()
    for totals in found:
        merged.add(totals)
    return merged


def _statistics(
    dispatcher: Dispatcher, name: str, servable: str, method: str, version: int, totals: Optional[MethodTotals]
) -> ModelStatistics:
    stats = ModelStatistics(name, str(version))
    for (s, v, m, _), series in dispatcher.requests.series.items():
        if (s, v, m) == (servable, str(version), method):
            stats.success.count += series.success
            stats.success.ns += series.success_ns
            stats.fail.count += sum(series.failures.values())
            stats.fail.ns += series.failure_ns
            stats.last_inference = max(stats.last_inference, series.last_ms)
    if totals is not None:
        stats.inference_count, stats.execution_count = totals.inferences, totals.executions
        stats.queue = Duration(totals.jobs, totals.queue.total)
        stats.compute_input, stats.compute_infer, stats.compute_output = (
            Duration(totals.jobs, ns) for ns in totals.compute
        )
        stats.batch_stats = [
            BatchStatistics(
                size, Duration(entry[0], entry[1]), Duration(entry[0], entry[2]), Duration(entry[0], entry[3])
            )
            for size, entry in sorted(totals.by_batch.items())
        ]
    return stats
