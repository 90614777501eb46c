"""Server-wide settings, as MindSpore Serving's ``mindspore_serving.server.context`` offers them."""
from __future__ import annotations

from mindserve._checks import check_int as _check_int
from mindserve._master import get_master as _get_master

__all__ = ["set_max_enqueued_requests", "set_max_request_instances", "set_worker_restart_wait"]


def set_max_enqueued_requests(max_enqueued_requests: int) -> None:
    """Bound the requests waiting to be processed, over all servables (default 10000). A request past the bound
    is refused at once with ``Serving Error: enqueued requests count exceeds the limit N``."""
    _check_int("max_enqueued_requests", max_enqueued_requests, 1)
    master = _get_master()
    master.call(master.set_max_enqueued_requests(max_enqueued_requests))


def set_max_request_instances(max_request_instances: int) -> None:
    """Bound the instances of one request, on every protocol (default 10000; an Open Inference Protocol request's
    instances are dim 0 of its inputs). A request with more is refused before anything is made of its instances,
    with ``Instances count N of request exceeds the limit M, servable: S, method: F`` (INVALID_ARGUMENT, HTTP 400)."""
    _check_int("max_request_instances", max_request_instances, 1)
    master = _get_master()
    master.call(master.set_max_request_instances(max_request_instances))


def set_worker_restart_wait(seconds: float) -> None:
    """How long a request waits for a restarted worker when its servable version has no live one (default 5.0;
    0 refuses it at once with ``servable is not available``). Requests in flight on a worker that dies fail at
    once; those that arrive while it is being restarted (and those it had queued but not taken) run on the new
    worker once it is up, if that is within this time and the request's deadline."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
        raise RuntimeError(f"Parameter 'seconds' should be a number in [0, 3600], but actually {seconds!r}")
    master = _get_master()
    master.call(master.set_worker_restart_wait(float(seconds)))
