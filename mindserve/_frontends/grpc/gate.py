"""What every gRPC request of the serving services passes before its handler: admission (refused with
UNAVAILABLE once the server drains, counted while it runs, so that the drain waits for it, and its size noted,
so that memory is given back after large ones). The behaviors take and return serialized messages."""
from __future__ import annotations

from typing import Any, Awaitable, Callable

import grpc

from mindserve._frontends.admission import SHUTTING_DOWN, Admission

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def gated(admission: Admission, behavior: Behavior) -> Behavior:
    """A unary behavior that runs only while ``admission`` admits requests, counted as in progress meanwhile."""

    async def admitted(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not admission.enter():
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        reply = None
        try:
            reply = await behavior(request, context)
            return reply
        finally:
            admission.leave(len(request) + (len(reply) if isinstance(reply, bytes) else 0))

    return admitted
