"""What every gRPC request of the serving services passes before its handler: the doors' one admission
(``mindserve._frontends.admission.admitted``: UNAVAILABLE once the server drains, counted while it runs and its
size noted, an inference request tallied in the metrics), under the call's deadline. The behaviors take and
return serialized messages."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, NoReturn, Optional

import grpc

from mindserve._dispatch import deadlines
from mindserve._frontends.admission import SHUTTING_DOWN, Admission, admitted
from mindserve._metrics.requests import RequestMetrics

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _reply_bytes(reply: Any) -> int:
    return len(reply) if isinstance(reply, bytes) else 0


async def _refuse(request: Any, context: grpc.aio.ServicerContext) -> NoReturn:
    await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
    raise AssertionError("context.abort returned")  # it raises: the call ends with that status


def gated(
    admission: Admission, behavior: Behavior, metrics: Optional[RequestMetrics] = None, protocol: str = ""
) -> Behavior:
    """A unary behavior that runs only while ``admission`` admits requests, counted as in progress meanwhile;
    with ``metrics``, an inference RPC counted there under ``protocol``."""
    label = protocol if metrics is not None else None

    async def admit(request: Any, context: grpc.aio.ServicerContext) -> Any:
        # the call's deadline is the request's: work not started by then is dropped (mindserve._dispatch.deadlines)
        token = deadlines.narrow(context.time_remaining())
        try:
            return await admitted(
                admission, metrics, label, behavior, _refuse, (request, context), len(request), _reply_bytes
            )
        finally:
            deadlines.reset(token)

    return admit
