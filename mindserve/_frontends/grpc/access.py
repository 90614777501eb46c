"""The access check of the gRPC doors: a grpc.aio server interceptor, so that every method of every service,
unary and streaming alike, is checked when its call arrives, from its metadata, before any byte of its message
is read. Methods missing from the group table (``mindserve._access.groups``) are refused.

grpc reads a unary method's request message in full before it runs the method's behavior (up to
``max_msg_mb_size``), so a denial cannot be the behavior of a unary handler: a call the metadata refuses gets a
handler whose request side is a stream (stream_unary or stream_stream, the response side as the method's), whose
behavior aborts without asking for a message. With client certificates configured, such a call is checked again
against its verified TLS identity (the auth context exists only once a behavior runs): then the method's handler
is made request-streaming too, and its behavior checks the identity first and reads the one request message
only once the identity admits the call, then runs the method's own behavior on it."""

from __future__ import annotations

import inspect
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

import grpc

from mindserve._access.groups import grpc_group
from mindserve._access.identities import CN, DNS, EMAIL, IP, URI, Identity
from mindserve._access.policy import AccessPolicy
from mindserve._errors import PermissionDenied, ServingError
from mindserve._frontends.grpc.status import status_of
from mindserve._metrics import requests as request_metrics
from mindserve._metrics.requests import RequestMetrics

TRITON_PREFIX = "triton-grpc-protocol-"  # Triton's clients send header "<key>" of a restricted API with it
# the auth context's properties of a verified peer certificate, by type (grpc's "x509_subject_alternative_name"
# lists every SAN without its type, so it is not read)
_AUTH_PROPERTIES = (
    ("x509_common_name", CN),
    ("peer_dns", DNS),
    ("peer_ip", IP),
    ("peer_email", EMAIL),
    ("peer_uri", URI),
)
NO_REQUEST = "the call ended before its request message"

Check = Callable[[grpc.aio.ServicerContext], Awaitable[None]]


def _metadata_reader(metadata: Optional[tuple]) -> Callable[[str], list[str]]:
    """Every value of a metadata key, in order: the key's own, then those of its Triton-prefixed form."""
    values: dict[str, list[str]] = {}
    for key, value in metadata or ():
        if isinstance(value, str):
            values.setdefault(key, []).append(value)

    def header(name: str) -> list[str]:
        return values.get(name, []) + values.get(TRITON_PREFIX + name, [])

    return header


def _identities(context: grpc.aio.ServicerContext) -> list[Identity]:
    """The typed names a verified client certificate carries: its common name and subject alternative names."""
    auth = context.auth_context() or {}
    return [
        (kind, value.decode(errors="replace") if isinstance(value, bytes) else str(value))
        for prop, kind in _AUTH_PROPERTIES
        for value in auth.get(prop, ())
    ]


def _request_streaming(handler: grpc.RpcMethodHandler, behavior: Callable) -> grpc.RpcMethodHandler:
    """A handler with ``handler``'s response kind and (de)serializers whose request side is a stream, running
    ``behavior(request_iterator, context)``: grpc then reads no message until the behavior asks for one."""
    make = grpc.stream_stream_rpc_method_handler if handler.response_streaming else grpc.stream_unary_rpc_method_handler
    return make(
        behavior, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


def _refusing(handler: grpc.RpcMethodHandler, refuse: Check) -> grpc.RpcMethodHandler:
    """A handler that aborts every call with ``refuse`` without reading a message of it."""

    async def behavior(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        await refuse(context)  # (it aborts: context.abort raises)

    return _request_streaming(handler, behavior)


async def _single(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
    """The first request message of a unary method's call read as a stream (further ones are not read, as grpc
    reads none past the first of a unary call)."""
    try:
        return await requests.__anext__()
    except StopAsyncIteration:
        await context.abort(grpc.StatusCode.INTERNAL, NO_REQUEST)


def _checked_first(handler: grpc.RpcMethodHandler, check: Check) -> grpc.RpcMethodHandler:
    """``handler`` whose behavior runs only once ``check(context)`` passes (it aborts the call otherwise), before
    any request message is read: a unary request side becomes a stream read only after the check."""
    if handler.request_streaming:
        behavior = handler.stream_stream if handler.response_streaming else handler.stream_unary
        if inspect.isasyncgenfunction(behavior):

            async def checked_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await check(context)
                async for reply in behavior(requests, context):
                    yield reply

            return _request_streaming(handler, checked_stream)

        async def checked(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(context)
            return await behavior(requests, context)

        return _request_streaming(handler, checked)

    unary = handler.unary_stream if handler.response_streaming else handler.unary_unary
    if inspect.isasyncgenfunction(unary):

        async def checked_unary_stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            await check(context)
            request = await _single(requests, context)
            async for reply in unary(request, context):
                yield reply

        return _request_streaming(handler, checked_unary_stream)

    async def checked_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        await check(context)
        request = await _single(requests, context)
        return await unary(request, context)  # (a unary_stream behavior that writes with context.write: None)

    return _request_streaming(handler, checked_unary)


async def _abort(context: grpc.aio.ServicerContext, error: ServingError) -> None:
    await context.abort(status_of(error), error.message)


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call of one gRPC server against an access policy; inference calls it refuses are counted in
    ``metrics``."""

    def __init__(self, policy: AccessPolicy, metrics: Optional[RequestMetrics] = None):
        self._policy = policy
        self._metrics = metrics

    async def _refuse(self, context: grpc.aio.ServicerContext, method: str, denial: ServingError) -> None:
        protocol = request_metrics.GRPC_PROTOCOLS.get(method)
        if self._metrics is not None and protocol is not None:
            self._metrics.refused(protocol, request_metrics.reason_of(denial))
        await _abort(context, denial)

    async def intercept_service(
        self, continuation: Callable, details: grpc.HandlerCallDetails
    ) -> Optional[grpc.RpcMethodHandler]:
        handler = await continuation(details)
        if handler is None:  # no such method: gRPC answers UNIMPLEMENTED
            return None
        method = details.method
        group = grpc_group(method)
        if group is None:
            denial: ServingError = PermissionDenied(f"the method {method} is not in the access table")
        else:
            if not self._policy.guards(group):
                return handler
            found = self._policy.decide(group, _metadata_reader(details.invocation_metadata))
            if found is None:
                return handler
            denial = found
            if self._policy.uses_certificates:

                async def check_certificate(context: grpc.aio.ServicerContext) -> None:
                    if not self._policy.admits_identities(group, _identities(context)):
                        await self._refuse(context, method, denial)

                return _checked_first(handler, check_certificate)

        async def refuse(context: grpc.aio.ServicerContext) -> None:
            await self._refuse(context, method, denial)

        return _refusing(handler, refuse)
