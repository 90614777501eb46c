"""What every gRPC request of the serving services passes before its handler: admission (refused with
UNAVAILABLE once the server drains, counted while it runs, so that the drain waits for it, and its size noted,
so that memory is given back after large ones), and for inference requests their tally in the metrics. The
behaviors take and return serialized messages."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Optional

import grpc

from mindserve._frontends.admission import SHUTTING_DOWN, Admission
from mindserve._metrics import requests as request_metrics
from mindserve._metrics.requests import RequestMetrics

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def gated(admission: Admission, behavior: Behavior, metrics: Optional[RequestMetrics] = None,
          protocol: str = "") -> Behavior:
    """A unary behavior that runs only while ``admission`` admits requests, counted as in progress meanwhile;
    with ``metrics``, an inference RPC counted there under ``protocol``."""

    async def admitted(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not admission.enter():
            if metrics is not None:
                metrics.refused(protocol, request_metrics.SHUTTING_DOWN)
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        reply = None
        tally = metrics.begin(protocol) if metrics is not None else None
        try:
            reply = await behavior(request, context)
            return reply
        except asyncio.CancelledError as exc:  # the client went away (or its deadline passed)
            request_metrics.note_error(exc)
            raise
        finally:
            if metrics is not None and tally is not None:
                metrics.end(*tally)
            admission.leave(len(request) + (len(reply) if isinstance(reply, bytes) else 0))

    return admitted
