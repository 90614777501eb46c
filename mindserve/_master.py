"""The master process's runtime: one asyncio loop in a background thread that runs the frontends, the
dispatcher and worker supervision. The public ``mindserve.server`` functions are thin calls into it.

``start_*`` return once their part is up; the process then keeps serving after the script's last line (an
atexit hook waits) until ``stop()``, SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import sys
import threading
from dataclasses import replace
from typing import Any, Coroutine, Optional

from mindserve._access.config import AccessConfig
from mindserve._access.policy import AccessPolicy
from mindserve._config import MediaStreamConfig, ServableStartConfig, SSLConfig
from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._frontends import stream_memory
from mindserve._frontends.admission import Admission
from mindserve._frontends.grpc import health_reflection, media_graph_service, ms_service, oip_service, seldon_service
from mindserve._frontends.grpc.access import AccessInterceptor
from mindserve._frontends.grpc.media_graph_service import MediaGraphHandler
from mindserve._frontends.grpc.ms_service import MSServiceHandler
from mindserve._frontends.grpc.oip_service import OipServiceHandler
from mindserve._frontends.grpc.seldon_service import SeldonServiceHandler
from mindserve._frontends.grpc.server import GrpcServer
from mindserve._frontends.heap_trim import HeapTrimmer
from mindserve._frontends.off_loop import OffLoop
from mindserve._frontends.seldon import request_data
from mindserve._frontends.shared_memory.regions import ClientRegions
from mindserve._frontends.stream_memory import StreamMemory
from mindserve._servable import directory
from mindserve._supervision.servable_workers import ServableWorkers
from mindserve._supervision.worker_process import WorkerSpec

log = logging.getLogger("mindserve")

DRAIN_GRACE_S = 10.0  # how long stop() lets requests in progress finish
LISTENER_GRACE_S = 1.0  # then, what a gRPC server gives the calls it is still refusing
DRAIN_LINGER_MIN_S = 0.1  # after a drain, the listeners refuse requests this long before they close
DRAIN_LINGER_MAX_S = 1.0  # and up to this long while REST connections are still open
METRICS_IDLE_TIMEOUT_S = 60.0  # a scraper keeps its connection between scrapes (Prometheus's default interval: 60 s)

# the gRPC services every server answers (and reflection lists)
GRPC_SERVICE_NAMES = (
    ms_service.SERVICE_NAME,
    oip_service.SERVICE_NAME,
    seldon_service.SERVICE_NAME,
    media_graph_service.SERVICE_NAME,
    health_reflection.HEALTH_SERVICE_NAME,
    health_reflection.REFLECTION_SERVICE_NAME,
)


class Master:
    def __init__(self) -> None:
        self.dispatcher = Dispatcher()
        self.worker_groups: list[ServableWorkers] = []  # the started versions' workers, which the master stops
        self.grpc_servers: list[GrpcServer] = []
        self.rest_servers: list = []  # RestServer each (its module imports aiohttp, an optional dependency)
        self.metrics_servers: list = []  # RestServer each, serving /metrics
        self._metrics: Any = None  # the ServerMetrics registry, made by the first metrics server
        self._grpc_handlers: list = []  # made on the loop by the first start_grpc_server, shared by all servers
        self.client_regions = ClientRegions()  # clients' shared memory, for the servers that allow it
        self._policies: dict[int, tuple[AccessConfig, AccessPolicy]] = {}
        self._health: Optional[health_reflection.HealthMonitor] = None
        self._off_loop = OffLoop()  # started now, while the main thread runs (see off_loop)
        # every door's requests, refused once a stop begins; memory given back after large ones
        self._admission = Admission(HeapTrimmer(self._off_loop))
        # one budget for what every stream holds (answers not yet sent, frames not yet run), over all servers;
        # it also tells the streams to stop reading when a stop begins
        self.stream_memory = StreamMemory()
        stream_memory.install(self.stream_memory)
        self.stopped = threading.Event()
        self._stopping = threading.Lock()  # held for good by the first stop()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="mindserve-master", daemon=True)
        self._thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        self._loop.close()

    def call(self, coro: Coroutine) -> Any:
        """Run ``coro`` on the master loop and wait for its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def start_servables(self, configs: list[ServableStartConfig]) -> None:
        groups: list[ServableWorkers] = []
        for config in configs:
            directory.servable_path(config.servable_directory, config.servable_name)
            version = directory.resolve_version(config.servable_directory, config.servable_name, config.version_number)
            if self.dispatcher.has(config.servable_name, version) or any(
                g.name == config.servable_name and g.version == version for g in groups
            ):
                raise RuntimeError(f"servable {config.servable_name} version {version} has already been started")
            specs = [
                WorkerSpec(
                    config.servable_directory,
                    config.servable_name,
                    version,
                    device_id,
                    config.device_type,
                    config.max_batch_size,
                    config.max_batch_delay_ms,
                    config.shm_size_mb,
                    max_queue_delay_ms=config.max_queue_delay_ms,
                )
                for device_id in config.device_ids
            ]
            # num_parallel_workers counts the device workers too: only the processes past them are extra
            extra = max(config.num_parallel_workers - len(specs), 0)
            groups.append(ServableWorkers(specs, [replace(specs[0], python_worker=k) for k in range(1, extra + 1)]))
        outcomes = await asyncio.gather(*(g.start() for g in groups), return_exceptions=True)
        for i, group in enumerate(groups):  # a Seldon request .proto is compiled now: one that fails fails the start
            proto = (group.seldon or {}).get("request_proto") if outcomes[i] is None else None
            if proto:
                try:
                    await asyncio.to_thread(request_data.request_types, proto)
                except RuntimeError as exc:
                    outcomes[i] = exc
                    await group.stop()
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            await asyncio.gather(*(g.stop() for g, o in zip(groups, outcomes) if o is None), return_exceptions=True)
            raise failed[0]
        for group in groups:
            self.worker_groups.append(group)
            self.dispatcher.add(group)
            log.info(
                "servable %s version %d ready on %d worker(s) and %d Python-stage worker(s)",
                group.name,
                group.version,
                len(group.workers),
                len(group.python_workers),
            )

    async def set_max_enqueued_requests(self, limit: int) -> None:
        self.dispatcher.max_enqueued_requests = limit

    async def set_max_request_instances(self, limit: int) -> None:
        self.dispatcher.max_request_instances = limit

    async def set_max_stream_memory_mb(self, mb: int) -> None:
        self.stream_memory.set_limit(mb << 20)

    async def set_worker_restart_wait(self, seconds: float) -> None:
        self.dispatcher.set_restart_wait(seconds)

    async def set_client_shm_owners(self, uids: list[int]) -> None:
        self.client_regions.set_owners(uids)

    def access_policy(self, access: Optional[AccessConfig]) -> Optional[AccessPolicy]:
        """The policy of an AccessConfig: one per config object, so that the tokens one door issues are taken by
        every door given the same config."""
        if access is None:
            return None
        known = self._policies.get(id(access))
        if known is None or known[0] is not access:
            known = self._policies[id(access)] = (access, AccessPolicy(access))
        return known[1]

    async def start_grpc_server(
        self,
        address: str,
        max_msg_mb_size: int,
        ssl_config: Optional[SSLConfig],
        access: Optional[AccessConfig] = None,
        media_stream: Optional[MediaStreamConfig] = None,
        allow_client_shm: bool = False,
    ) -> GrpcServer:
        policy = self.access_policy(access)
        if not self._grpc_handlers:
            self._health = health_reflection.HealthMonitor(self.dispatcher, GRPC_SERVICE_NAMES)
            await self._health.start()
            self._grpc_handlers = [
                SeldonServiceHandler(self.dispatcher, self._admission).rpc_handlers(),
                self._health.rpc_handlers(),
                health_reflection.reflection_handler(GRPC_SERVICE_NAMES),
            ]
        interceptors = [AccessInterceptor(policy, self.dispatcher.requests)] if policy is not None else []
        # this server's own: whether it takes client shared memory, the media streams' default target
        regions = self.client_regions.for_server(max_msg_mb_size << 20, self._off_loop) if allow_client_shm else None
        own = [
            MSServiceHandler(self.dispatcher, self._off_loop, self._admission, regions).rpc_handlers(),
            OipServiceHandler(self.dispatcher, self._admission, regions).rpc_handlers(),
            MediaGraphHandler(self.dispatcher, self._off_loop, self._admission, media_stream, regions).rpc_handlers(),
        ]
        server = await GrpcServer.start(
            address, [*own, *self._grpc_handlers], max_msg_mb_size, ssl_config, interceptors
        )
        self.grpc_servers.append(server)
        log.info("gRPC server listening on %s%s", server.address, " (TLS)" if ssl_config else "")
        return server

    async def start_restful_server(
        self,
        address: str,
        max_msg_mb_size: int,
        ssl_config: Optional[SSLConfig],
        idle_timeout: float,
        max_connections: int,
        access: Optional[AccessConfig] = None,
        allow_client_shm: bool = False,
    ) -> Any:
        """The started RestServer (typed Any: aiohttp, which it needs, is imported only once one starts)."""
        from mindserve._frontends.rest.connections import ConnectionLimits
        from mindserve._frontends.rest.server import RestServer

        server = await RestServer.start(
            address,
            self.dispatcher,
            max_msg_mb_size,
            ssl_config,
            DRAIN_GRACE_S,
            self._admission,
            ConnectionLimits(idle_timeout, max_connections),
            self.access_policy(access),
            self.client_regions.for_server(max_msg_mb_size << 20, self._off_loop) if allow_client_shm else None,
        )
        self.rest_servers.append(server)
        log.info("REST server listening on %s%s", server.address, " (TLS)" if ssl_config else "")
        return server

    async def start_metrics_server(
        self, address: str, ssl_config: Optional[SSLConfig], access: Optional[AccessConfig] = None
    ) -> Any:
        """The started metrics server (a RestServer serving /metrics)."""
        from mindserve._frontends.rest.connections import ConnectionLimits
        from mindserve._frontends.rest.metrics_app import make_metrics_app
        from mindserve._frontends.rest.server import RestServer
        from mindserve._metrics.exposition import ServerMetrics

        if self._metrics is None:
            self._metrics = ServerMetrics(self.dispatcher)
        server = await RestServer.listen(
            address,
            make_metrics_app(self._metrics, self.access_policy(access)),
            ssl_config,
            DRAIN_GRACE_S,
            ConnectionLimits(METRICS_IDLE_TIMEOUT_S, 100),
            "metrics server",
        )
        self.metrics_servers.append(server)
        log.info("metrics server listening on %s%s", server.address, " (TLS)" if ssl_config else "")
        return server

    async def stop_server(self, server: Any) -> None:
        """Stop one gRPC, REST or metrics server of this master (the others, and the workers, go on): calls in progress
        on it finish within the drain grace."""
        if server in self.grpc_servers:
            self.grpc_servers.remove(server)
            await server.stop(DRAIN_GRACE_S)
        elif server in self.rest_servers:
            self.rest_servers.remove(server)
            await server.stop()
        elif server in self.metrics_servers:
            self.metrics_servers.remove(server)
            await server.stop()

    async def _shutdown(self) -> None:
        if self._health is not None:  # NOT_SERVING while draining; health Watch streams end now
            await self._health.stop()
        # every door now answers new requests UNAVAILABLE (503), which clients retry, while those accepted finish;
        # the listeners close only then, so that no accepted request is cut off
        # streams stop reading: what they accepted (a media stream's incomplete batch too) is answered, then they
        # end UNAVAILABLE
        self.stream_memory.drain()
        if not await self._admission.close(DRAIN_GRACE_S):
            log.warning(
                "%d request(s) still in progress after %.0f s of draining", self._admission.in_flight, DRAIN_GRACE_S
            )
        # The listeners stay open a moment longer, refusing: a gRPC call that reached the server but not yet its
        # handler would be CANCELLED by the server's stop, and an HTTP/1.1 keep-alive connection closed while its
        # client sends on it reads as a dropped connection; meanwhile each gets its UNAVAILABLE (503 with
        # "Connection: close"), which clients retry.
        await asyncio.sleep(DRAIN_LINGER_MIN_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_LINGER_MAX_S
        while any(s.open_connections for s in self.rest_servers) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.gather(
            *(s.stop(LISTENER_GRACE_S) for s in self.grpc_servers),
            *(s.stop() for s in self.rest_servers),
            return_exceptions=True,
        )
        # the metrics server is the last to go: a scrape during the drain still sees the requests finish
        await asyncio.gather(*(s.stop() for s in self.metrics_servers), return_exceptions=True)
        await asyncio.gather(*(g.stop() for g in self.worker_groups), return_exceptions=True)
        self.client_regions.close()
        if self._admission.trimmer is not None:
            await self._admission.trimmer.close()

    def stop(self) -> None:
        """Drain and stop the servers, end the workers, end the loop thread. A second call while a stop is under
        way (a second Ctrl-C, say) returns at once and leaves that stop to finish."""
        if self.stopped.is_set() or not self._stopping.acquire(blocking=False):
            return
        try:
            self.call(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if threading.current_thread() is not self._thread:
                self._thread.join()
            self.stopped.set()


_lock = threading.Lock()
_master: Optional[Master] = None
_waiting_at_exit = False
_previous_handlers: dict = {}
_died = False  # the main thread ended with an uncaught exception: the exit hook stops, it does not wait


def get_master() -> Master:
    """The running master, started (with its signal handlers and exit hook) on first use."""
    global _master
    with _lock:
        if _master is None or _master.stopped.is_set():
            _master = Master()
            _install_signal_handlers()
            _install_excepthook()
        return _master


def stop() -> None:
    with _lock:
        master = _master
    if master is not None:
        master.stop()


def _wait_at_exit() -> None:
    """atexit hook: keep a serving process alive after its script ends, until stop() or a signal."""
    global _waiting_at_exit
    master = _master
    if master is None or master.stopped.is_set():
        return
    if _died:  # the script failed (its traceback is printed): stop the workers and let it exit non-zero
        master.stop()
        return
    if (
        not master.grpc_servers
        and not master.rest_servers
        and not master.metrics_servers
        and not master.dispatcher.groups()
    ):
        master.stop()  # nothing is being served (start_servables failed, say): let the process end
        return
    _waiting_at_exit = True
    while not master.stopped.wait(0.5):  # wakes for signal handlers too
        pass


def _on_signal(signum: int, frame) -> None:
    stop()
    if _waiting_at_exit:
        return  # the exit hook returns now and the process ends normally
    previous = _previous_handlers.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_excepthook() -> None:
    """Note a script's death by an uncaught exception (then the exit hook must not keep its workers serving),
    and leave the printing to the hook in place."""
    previous = sys.excepthook
    if getattr(previous, "_mindserve", False):
        return

    def note_death(kind, value, traceback) -> None:
        global _died
        _died = True
        previous(kind, value, traceback)

    note_death._mindserve = True  # type: ignore[attr-defined]
    sys.excepthook = note_death


def _install_signal_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signals can only be handled by the main thread; stop() still works
    for signum in (signal.SIGINT, signal.SIGTERM):
        current = signal.getsignal(signum)
        if current is not _on_signal:
            _previous_handlers[signum] = current
            signal.signal(signum, _on_signal)


atexit.register(_wait_at_exit)
