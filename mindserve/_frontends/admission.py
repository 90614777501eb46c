"""Admission of requests through every door, so that a drain keeps its promise: once the master starts to stop,
each door refuses new requests with its "unavailable" answer (gRPC UNAVAILABLE, HTTP 503), which clients retry
elsewhere, while the requests it had accepted run to the end and are answered. Only then are the listeners
closed: a request is never cut off (CANCELLED, a dropped connection) because the server was stopping.
"""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from typing import Any, Awaitable, Callable, Optional, TypeVar

from mindserve._frontends.heap_trim import HeapTrimmer
from mindserve._metrics import requests as request_metrics
from mindserve._metrics.requests import RequestMetrics

T = TypeVar("T")
_UNTALLIED = nullcontext()  # a request the metrics do not count (not an inference request)

SHUTTING_DOWN = "the server is shutting down: send the request again, to another replica"


class Admission:
    """Counts the requests in progress over all doors; ``close`` refuses new ones from then on. ``trimmer`` hears
    of the size of each request answered (large ones give memory back afterwards)."""

    def __init__(self, trimmer: Optional[HeapTrimmer] = None) -> None:
        self.closed = False
        self.in_flight = 0
        self.trimmer = trimmer
        self._idle: Optional[asyncio.Event] = None

    def enter(self) -> bool:
        """Admit a request (the door then calls ``leave`` when it is answered); False once closed."""
        if self.closed:
            return False
        self.in_flight += 1
        return True

    def leave(self, nbytes: int = 0) -> None:
        """A request admitted is answered; ``nbytes``: its request and reply bytes, where the door knows them."""
        if self.trimmer is not None:
            self.trimmer.note(nbytes)
        self.in_flight -= 1
        if self.closed and not self.in_flight and self._idle is not None:
            self._idle.set()

    async def close(self, timeout: float) -> bool:
        """Refuse new requests and wait, up to ``timeout`` seconds, until those in progress are answered; whether
        they all were."""
        self.closed = True
        if not self.in_flight:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


async def admitted(
    admission: Admission,
    metrics: Optional[RequestMetrics],
    protocol: Optional[str],
    handle: Callable[..., Awaitable[T]],
    refuse: Callable[..., Awaitable[T]],
    args: tuple,
    request_bytes: int,
    reply_bytes: Callable[[Any], int],
) -> T:
    """One request through admission, as every door takes it (gRPC's gate, REST's middleware): ``refuse(*args)``
    answers it once the server drains; otherwise ``handle(*args)`` answers it, counted as in progress meanwhile,
    and its size (``request_bytes`` and ``reply_bytes`` of the answer) noted. With ``metrics`` and a
    ``protocol``, an inference request is tallied there (a client that goes away counted as cancelled), refused
    ones too. (Functions and their arguments, not closures: nothing is made per request on this path.)"""
    if not admission.enter():
        if metrics is not None and protocol is not None:
            metrics.refused(protocol, request_metrics.SHUTTING_DOWN)
        return await refuse(*args)
    reply = None
    try:
        with metrics.tallied(protocol) if metrics is not None and protocol is not None else _UNTALLIED:
            reply = await handle(*args)
        return reply
    finally:
        admission.leave(request_bytes + reply_bytes(reply))
