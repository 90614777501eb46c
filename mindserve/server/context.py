"""Server-wide settings, as MindSpore Serving's ``mindspore_serving.server.context`` offers them."""

from __future__ import annotations

from typing import Sequence as _Sequence
from typing import Union as _Union

from mindserve._checks import check_int as _check_int
from mindserve._frontends.shared_memory.owners import OwnerError as _OwnerError
from mindserve._frontends.shared_memory.owners import owner_uids as _owner_uids
from mindserve._frontends.stream_memory import MAX_STREAM_MEMORY_MB as _MAX_STREAM_MEMORY_MB
from mindserve._master import get_master as _get_master

__all__ = [
    "set_max_enqueued_requests",
    "set_max_request_instances",
    "set_max_stream_memory_mb",
    "set_worker_restart_wait",
    "set_client_shm_owners",
]


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


def set_max_stream_memory_mb(max_stream_memory_mb: int) -> None:
    """Bound the memory the master's streams hold, over all gRPC servers (default 256 MB): ModelStreamInfer
    answers made and not yet sent, media-stream frames read and not yet run (decoded size counted). Past it,
    streams stop reading until memory is released (gRPC's flow control then holds their clients back); no
    stream holds more than half of it, and a frame that would need more ends its stream RESOURCE_EXHAUSTED."""
    _check_int("max_stream_memory_mb", max_stream_memory_mb, 1, _MAX_STREAM_MEMORY_MB)
    master = _get_master()
    master.call(master.set_max_stream_memory_mb(max_stream_memory_mb))


def set_worker_restart_wait(seconds: float) -> None:
    """How long a request waits for a restarted worker when its servable version has no live one (default 5.0;
    0 refuses it at once with ``servable is not available``). Requests in flight on a worker that dies fail at
    once; those that arrive while it is being restarted (and those it had queued but not taken) run on the new
    worker once it is up, if that is within this time and the request's deadline."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
        raise RuntimeError(f"Parameter 'seconds' should be a number in [0, 3600], but actually {seconds!r}")
    master = _get_master()
    master.call(master.set_worker_restart_wait(float(seconds)))


def set_client_shm_owners(owners: _Sequence[_Union[str, int]]) -> None:
    """Whose files clients may name as shared memory, besides the server's own user: user names (resolved now)
    or uids, e.g. ``["ava", 1001]`` (the video-analytics module often runs as another user). It applies to every
    form of client shared memory (Triton's regions, MindSpore's ``shm_data``, media-stream frames), on the servers
    started with ``allow_client_shm=True``; each call replaces the list (``[]``: the server's user only, the
    default). Regions already registered stay. A name that is no user of this host is refused with RuntimeError."""
    try:
        uids = _owner_uids(owners)
    except _OwnerError as exc:
        raise RuntimeError(f"Parameter 'owners': {exc}") from None
    master = _get_master()
    master.call(master.set_client_shm_owners(uids))
