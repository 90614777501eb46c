"""Standard gRPC health checking (``grpc.health.v1.Health``) and server reflection
(``grpc.reflection.v1alpha.ServerReflection``) on the same server as MSService and the Open Inference Protocol.

Health follows the workers (a server that says SERVING while its workers are dead is worse than none):
- ``""`` (the server) and each served gRPC service name: SERVING while every started servable version has a live
  worker, like OIP ServerReady;
- a servable's name and each ``servable.method``: SERVING while at least one of its versions has a live worker
  (requests that leave the version to the server are answered then);
- ``liveness``: SERVING while the server runs, whatever its workers do (a dead worker is restarted by the
  server itself: a liveness probe must not restart the whole process for it).
The statuses are recomputed on the master loop whenever the dispatcher tells of a change (a servable version
added, a worker dead, a replacement up), and Watch streams get each change. At stop every status turns
NOT_SERVING and Watch streams end.

Both services use the registry's servicers (grpcio-health-checking, grpcio-reflection) behind handlers that take
raw bytes, so a malformed request is refused with INVALID_ARGUMENT and a text, as on the other services.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Optional, Sequence

import grpc
from google.protobuf import any_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.reflection import aio as reflection_aio

from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._frontends.grpc.strict_parse import InvalidMessage, parse_strict
from mindserve._proto import grpc_inference, media_graph, ms_service_pb2, seldon

log = logging.getLogger("mindserve")

HEALTH_SERVICE_NAME = "grpc.health.v1.Health"
REFLECTION_SERVICE_NAME = "grpc.reflection.v1alpha.ServerReflection"

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVENESS = "liveness"  # the health name of the process itself (Kubernetes liveness probes ask for it)


def health_statuses(dispatcher: Dispatcher, service_names: Sequence[str]) -> dict[str, bool]:
    """Whether each health name is serving now (see the module's text)."""
    served = dispatcher.served()
    server_ready = all(s.ready for s in served)
    statuses = {"": server_ready, LIVENESS: True}
    statuses.update((name, server_ready) for name in service_names)
    for version in served:
        names = [version.name] + [f"{version.name}.{method}" for method in version.methods]
        for name in names:
            statuses[name] = statuses.get(name, False) or version.ready
    return statuses


class HealthMonitor:
    """The health service of one master: the registry's asyncio HealthServicer, kept up to date by the
    dispatcher's change notifications."""

    def __init__(self, dispatcher: Dispatcher, service_names: Sequence[str]):
        self._dispatcher = dispatcher
        self._service_names = tuple(service_names)
        self._servicer = health_aio.HealthServicer()
        self._current: dict[str, bool] = {}
        self._task: Optional[asyncio.Task] = None  # a refresh under way
        self._again = False  # a change came during it
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Set the statuses now, then keep them current (call on the master loop)."""
        await self.refresh()
        self._dispatcher.subscribe(self._on_change)

    def _on_change(self) -> None:
        """A change of the dispatcher's: one refresh at a time, and one more if changes came meanwhile."""
        if self._stopped.is_set():
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._refresh_until_current(), name="mindserve-health")

    async def _refresh_until_current(self) -> None:
        while True:
            self._again = False
            try:
                await self.refresh()
            except Exception:  # a stale health answer is better than none; the next change tries again
                log.exception("health status update failed")
            if not self._again:
                return

    async def refresh(self) -> None:
        """Bring every status up to date; watchers hear of the ones that changed."""
        if self._stopped.is_set():
            return
        for name, serving in health_statuses(self._dispatcher, self._service_names).items():
            if self._current.get(name) != serving:
                self._current[name] = serving
                await self._servicer.set(name, _SERVING if serving else _NOT_SERVING)

    async def stop(self) -> None:
        """Turn every status NOT_SERVING, end a refresh under way and the Watch streams."""
        if self._stopped.is_set():
            return
        await self._servicer.enter_graceful_shutdown()
        self._stopped.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def rpc_handlers(self) -> grpc.GenericRpcHandler:
        serialize = health_pb2.HealthCheckResponse.SerializeToString
        return grpc.method_handlers_generic_handler(
            HEALTH_SERVICE_NAME,
            {
                "Check": grpc.unary_unary_rpc_method_handler(self._check, response_serializer=serialize),
                "Watch": grpc.unary_stream_rpc_method_handler(self._watch, response_serializer=serialize),
            },
        )

    @staticmethod
    async def _parse(data: bytes, context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckRequest:
        try:
            return parse_strict(health_pb2.HealthCheckRequest, data)
        except InvalidMessage as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def _check(self, data: bytes, context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        request = await self._parse(data, context)
        if request.service not in self._current:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown service '{request.service}': health is kept for '' (the server), "
                f"'{LIVENESS}', the gRPC services, each servable and each 'servable.method'",
            )
        return await self._servicer.Check(request, context)

    async def _watch(self, data: bytes, context: grpc.aio.ServicerContext) -> None:
        request = await self._parse(data, context)
        context = _LastStatusContext(context)
        watch = asyncio.ensure_future(self._servicer.Watch(request, context))
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait((watch, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watch, stopped):
                task.cancel()
            await asyncio.gather(watch, stopped, return_exceptions=True)
        if self._stopped.is_set() and context.last_status != _NOT_SERVING:
            # the stream ends here so that stopping the server does not wait for it; its last word is NOT_SERVING
            await context.write(health_pb2.HealthCheckResponse(status=_NOT_SERVING))


class _LastStatusContext:
    """A servicer context that remembers the last status written to a Watch stream."""

    def __init__(self, context: grpc.aio.ServicerContext):
        self._context = context
        self.last_status: Optional[int] = None

    async def write(self, response: health_pb2.HealthCheckResponse) -> None:
        # noted before the await: a write cancelled at stop has already handed its message to gRPC
        self.last_status = response.status
        await self._context.write(response)

    def __getattr__(self, name: str):
        return getattr(self._context, name)


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """A descriptor pool with the files of every service served. It is a pool of its own because the OIP
    messages live outside protobuf's default pool (see mindserve/_proto/grpc_inference.py)."""
    pool = descriptor_pool.DescriptorPool()
    for file in (
        ms_service_pb2.DESCRIPTOR,
        grpc_inference.DESCRIPTOR,
        any_pb2.DESCRIPTOR,
        seldon.DESCRIPTOR,
        media_graph.DESCRIPTOR,
        health_pb2.DESCRIPTOR,
        reflection_pb2.DESCRIPTOR,
    ):
        pool.AddSerializedFile(file.serialized_pb)
    return pool


def reflection_handler(service_names: Sequence[str]) -> grpc.GenericRpcHandler:
    """ServerReflection listing ``service_names`` and describing their messages."""
    servicer = reflection_aio.ReflectionServicer(list(service_names), pool=reflection_pool())

    async def info(request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            async for data in request_iterator:
                try:
                    request = parse_strict(reflection_pb2.ServerReflectionRequest, data)
                except InvalidMessage as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                yield request

        async for response in servicer.ServerReflectionInfo(requests(), context):
            yield response.SerializeToString()

    return grpc.method_handlers_generic_handler(
        REFLECTION_SERVICE_NAME, {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(info)}
    )
