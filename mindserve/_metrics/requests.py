"""Counting inference requests in the master, whatever door they came through.

One place records a request's outcome. A door opens the tally of each inference request
(``with RequestMetrics.tallied(protocol)``: the doors' admission, and each stream's requests); what is learnt
while it runs is noted on the current tally without handing it down: the dispatcher notes the servable version
and method it resolved (``note_route``) and the instances' outcomes (``note_results``), each transport the
failure it answers with, in the one place where it maps errors to its answers (``note_failure``). An exception
that leaves the tally unanswered (the client went away) counts for its own reason. When the door answers, the
request is added to its series. Label values are only registered names (servable, method) or ``unknown``:
nothing a client writes becomes a label.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Optional, Sequence

from mindserve._errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FeatureDisabled,
    Internal,
    InvalidInput,
    KeyRequired,
    NoLiveWorker,
    NotServed,
    PermissionDenied,
    QueueFull,
    ServingError,
    StageFailed,
    Unauthenticated,
    WorkerLost,
    kind_of,
)
from mindserve._metrics.histogram import DURATION_BOUNDS_NS, Histogram

UNKNOWN = "unknown"  # the label value of a servable, version or method no request resolved to

# the protocol label of each door
MS = "ms"
V2 = "v2"
SELDON = "seldon"
REST_MS = "rest_ms"
REST_V2 = "rest_v2"
V2_STREAM = "v2_stream"  # ModelStreamInfer
MEDIA_STREAM = "media_stream"  # the video-analytics extension's ProcessMediaStream
# the gRPC inference methods and their protocol (what the access check counts when it refuses one)
GRPC_PROTOCOLS = {
    "/mindspore.serving.proto.MSService/Predict": MS,
    "/inference.GRPCInferenceService/ModelInfer": V2,
    "/inference.GRPCInferenceService/ModelStreamInfer": V2_STREAM,
    "/microsoft.azure.media.live_video_analytics.extensibility.grpc.v1.MediaGraphExtension/"
    "ProcessMediaStream": MEDIA_STREAM,
    "/io.seldon.api.rpc.Classifier/Predict": SELDON,
}

_REASONS: dict[type, str] = {
    InvalidInput: "invalid_input",
    NotServed: "not_found",
    QueueFull: "queue_full",
    StageFailed: "stage_failed",
    WorkerLost: "worker_lost",
    NoLiveWorker: "worker_lost",  # served, but no worker alive to run it: the same cause seen earlier
    Internal: "internal",
    Unauthenticated: "unauthenticated",
    KeyRequired: "unauthenticated",
    PermissionDenied: "permission_denied",
    AlreadyExists: "invalid_input",
    FeatureDisabled: "invalid_input",
    DeadlineExceeded: "deadline",
    Cancelled: "cancelled",
}
CANCELLED = "cancelled"
SHUTTING_DOWN = "shutting_down"
INVALID_INPUT = "invalid_input"


def reason_of(error: BaseException) -> str:
    """The ``reason`` label of a request that ended with ``error``."""
    if isinstance(error, ServingError):
        return _REASONS.get(kind_of(error), "internal")
    if isinstance(error, asyncio.CancelledError):
        return CANCELLED
    return "internal"


class Tally:
    """What is known of one inference request while it runs."""

    __slots__ = ("protocol", "started", "servable", "version", "method", "reason")

    def __init__(self, protocol: str):
        self.protocol = protocol
        self.started = time.perf_counter_ns()
        self.servable = UNKNOWN
        self.version = UNKNOWN
        self.method = UNKNOWN
        self.reason: Optional[str] = None  # the first failure noted; None while it succeeds


_current: ContextVar[Optional[Tally]] = ContextVar("mindserve_request_tally", default=None)


def note_route(servable: str, version: int, method: str) -> None:
    """The servable version and method the current request resolved to (the dispatcher's word: registered
    names only)."""
    tally = _current.get()
    if tally is not None:
        tally.servable, tally.version, tally.method = servable, str(version), method


def note_failure(cause: BaseException | str) -> None:
    """The current request failed: with an error (its reason: see ``reason_of``), or for a reason label (a
    failure that is not a ServingError, such as a malformed message). The first failure noted is the one counted."""
    tally = _current.get()
    if tally is not None and tally.reason is None:
        tally.reason = cause if isinstance(cause, str) else reason_of(cause)


def note_results(results: Sequence) -> None:
    """The outcome of each instance: a request with a failed instance counts as failed, for the first one's
    reason (MindSpore's replies carry each instance's error, the other protocols fail the whole request)."""
    tally = _current.get()
    if tally is not None and tally.reason is None and getattr(results, "stacked", None) is None:
        for outcome in results:
            if isinstance(outcome, ServingError):
                tally.reason = reason_of(outcome)
                return


class Series:
    """The counts of one (servable, version, method, protocol)."""

    __slots__ = ("success", "failures", "duration", "success_ns", "failure_ns", "last_ms")

    def __init__(self) -> None:
        self.success = 0
        self.failures: dict[str, int] = {}
        self.duration = Histogram(DURATION_BOUNDS_NS)
        self.success_ns = 0
        self.failure_ns = 0
        self.last_ms = 0  # wall-clock time of the last request, in ms since the epoch (Triton's last_inference)


SeriesKey = tuple[str, str, str, str]  # servable, version, method, protocol


class RequestMetrics:
    """Every door's inference requests, by servable version, method and protocol (the master's loop only)."""

    def __init__(self) -> None:
        self.series: dict[SeriesKey, Series] = {}

    def tallied(self, protocol: str) -> "Tallied":
        """The tally of a request that starts now, counted when the ``with`` block it opens ends."""
        return Tallied(self, protocol)

    def count(self, tally: Tally, elapsed_ns: int) -> None:
        key = (tally.servable, tally.version, tally.method, tally.protocol)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series()
        series.duration.observe(elapsed_ns)
        if tally.reason is None:
            series.success += 1
            series.success_ns += elapsed_ns
        else:
            series.failures[tally.reason] = series.failures.get(tally.reason, 0) + 1
            series.failure_ns += elapsed_ns
        series.last_ms = int(time.time() * 1000)

    def refused(self, protocol: str, reason: str) -> None:
        """A request refused before anything of it was read (no credentials, the server draining)."""
        tally = Tally(protocol)
        tally.reason = reason
        self.count(tally, time.perf_counter_ns() - tally.started)


class Tallied:
    """A request's tally while its door runs it (``with``): current for the layers below, counted at the end,
    an exception that ends it unanswered (cancellation, a defect) counted for its own reason unless a failure was
    noted before."""

    __slots__ = ("metrics", "tally", "token")

    def __init__(self, metrics: RequestMetrics, protocol: str):
        self.metrics = metrics
        self.tally = Tally(protocol)
        self.token: Optional[Token] = None

    def __enter__(self) -> Tally:
        self.token = _current.set(self.tally)
        return self.tally

    def __exit__(
        self, kind: Optional[type], error: Optional[BaseException], traceback: Optional[TracebackType]
    ) -> None:
        tally = self.tally
        if error is not None and tally.reason is None:
            tally.reason = reason_of(error)
        if self.token is not None:
            _current.reset(self.token)
        self.metrics.count(tally, time.perf_counter_ns() - tally.started)
