"""The unary RPCs of the serving services, as every gRPC door answers them: they take and answer serialized
messages (so that parsing is the door's own: strict, INVALID_ARGUMENT with a text), and an error is answered
once, here, as its gRPC status and text, never UNKNOWN and never a traceback."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import grpc

from mindserve._frontends.grpc.status import failure_status
from mindserve._frontends.grpc.strict_parse import parse_strict


def parsed(message_class: type, impl: Callable[[Any], Awaitable[Any]]) -> Callable[[bytes], Awaitable[bytes]]:
    """An RPC that takes and answers protobuf messages, as one that takes and answers their bytes."""

    async def call(data: bytes) -> bytes:
        return (await impl(parse_strict(message_class, data))).SerializeToString()

    return call


def unary(rpc: str, call: Callable[[bytes], Awaitable[bytes]]):
    """The gRPC behavior of an RPC: its answer, or its error as a status and a text (never UNKNOWN)."""

    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # context.abort raises; it is called outside the try block so that nothing here catches it
        try:
            return await call(data)
        except Exception as exc:
            status, message = failure_status(rpc, exc)
        await context.abort(status, message)
        raise AssertionError("context.abort returned")  # it raises: the call ends with that status

    return handle
