"""The access check of the gRPC doors: a grpc.aio server interceptor, so that every method of every service,
unary and streaming alike, is checked when its call arrives, from its metadata, before its handler reads a
message. With client certificates configured, a call the metadata does not admit is checked again against its
verified TLS identity once its handler starts (the auth context exists only there), still before anything of
it is read. Methods missing from the group table (``mindserve._access.groups``) are refused."""
from __future__ import annotations

import inspect
from typing import Any, Awaitable, Callable, Optional

import grpc

from mindserve._access.groups import grpc_group
from mindserve._access.policy import AccessPolicy
from mindserve._errors import PermissionDenied, ServingError
from mindserve._frontends.grpc.status import status_of
from mindserve._metrics import requests as request_metrics
from mindserve._metrics.requests import RequestMetrics

TRITON_PREFIX = "triton-grpc-protocol-"  # Triton's clients send header "<key>" of a restricted API with it


def _metadata_reader(metadata: Optional[tuple]) -> Callable[[str], Optional[str]]:
    values = {key: value for key, value in metadata or () if isinstance(value, str)}

    def header(name: str) -> Optional[str]:
        value = values.get(name)
        return values.get(TRITON_PREFIX + name) if value is None else value
    return header


def _identities(context: grpc.aio.ServicerContext) -> list[str]:
    """The names a verified client certificate carries: its common name and subject alternative names."""
    auth = context.auth_context() or {}
    names = list(auth.get("x509_common_name", ())) + list(auth.get("x509_subject_alternative_name", ()))
    return [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names]


def _with_behavior(handler: grpc.RpcMethodHandler, wrap: Callable[[Callable], Callable]) -> grpc.RpcMethodHandler:
    """``handler`` with its behavior wrapped, of the same kind (unary or streaming either way)."""
    if handler.request_streaming and handler.response_streaming:
        make, behavior = grpc.stream_stream_rpc_method_handler, handler.stream_stream
    elif handler.request_streaming:
        make, behavior = grpc.stream_unary_rpc_method_handler, handler.stream_unary
    elif handler.response_streaming:
        make, behavior = grpc.unary_stream_rpc_method_handler, handler.unary_stream
    else:
        make, behavior = grpc.unary_unary_rpc_method_handler, handler.unary_unary
    return make(wrap(behavior), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def _guarded(behavior: Callable, check: Callable[[Any], Awaitable[None]]) -> Callable:
    """``behavior`` run only once ``check(context)`` passes (it aborts the call otherwise)."""
    if inspect.isasyncgenfunction(behavior):
        async def stream(request: Any, context: grpc.aio.ServicerContext):
            await check(context)
            async for reply in behavior(request, context):
                yield reply
        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await check(context)
        return await behavior(request, context)
    return call


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

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) \
            -> Optional[grpc.RpcMethodHandler]:
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
                return _with_behavior(handler, lambda behavior: _guarded(
                    behavior, lambda context: self._check_certificate(context, method, group, denial)))

        async def refuse(context: grpc.aio.ServicerContext) -> None:
            await self._refuse(context, method, denial)
        return _with_behavior(handler, lambda behavior: _guarded(behavior, refuse))

    async def _check_certificate(self, context: grpc.aio.ServicerContext, method: str, group: str,
                                 denial: ServingError) -> None:
        if not self._policy.admits_identities(group, _identities(context)):
            await self._refuse(context, method, denial)
