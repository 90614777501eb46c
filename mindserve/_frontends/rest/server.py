"""A REST server of the master: one aiohttp application per address (``host:port`` or ``unix:/path``), with
optional TLS / mutual TLS and a request size limit, on the master's asyncio loop."""

from __future__ import annotations

import logging
import ssl
from typing import Optional

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from mindserve._access.groups import INFERENCE, rest_group
from mindserve._access.policy import AccessPolicy
from mindserve._config import SSLConfig
from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._frontends.admission import SHUTTING_DOWN, Admission, admitted
from mindserve._frontends.listen import host_port as parse_host_port
from mindserve._frontends.listen import read_pem, remove_socket_file, unix_socket, unix_socket_path
from mindserve._frontends.rest.access import TokenRoutes, access_middleware
from mindserve._frontends.rest.common import error_response
from mindserve._frontends.rest.connections import ConnectionLimits, capped_connections
from mindserve._frontends.rest.ms_routes import MindSporeRoutes
from mindserve._frontends.rest.v2_routes import V2Routes
from mindserve._frontends.shared_memory.regions import ClientRegions
from mindserve._metrics import requests as request_metrics
from mindserve._metrics.requests import RequestMetrics

ENDPOINTS = (
    "GET /v2/health/live, GET /v2/health/ready, GET /v2, GET /v2/models/{model}[/versions/{version}], "
    "GET /v2/models/{model}[/versions/{version}]/ready, POST /v2/models/{model}[/versions/{version}]/infer, "
    "GET /v2/models[/{model}[/versions/{version}]]/stats, POST /model/{servable}[/version/{version}]:{method}"
)


def ssl_context(config: SSLConfig) -> ssl.SSLContext:
    """The server side of TLS; with ``verify_client`` a client must present a certificate from ``custom_ca``."""
    for path, what in (
        (config.certificate, "certificate"),
        (config.private_key, "private key"),
        (config.custom_ca, "CA certificate"),
    ):
        if path:
            read_pem(path, what)  # a missing or unreadable file fails with the same text as for gRPC
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.certificate, config.private_key)
    except ssl.SSLError as exc:
        raise RuntimeError(
            f"cannot load the certificate '{config.certificate}' with the private key "
            f"'{config.private_key}': {exc.reason or exc}"
        ) from None
    if config.custom_ca:
        try:
            context.load_verify_locations(cafile=config.custom_ca)
        except ssl.SSLError as exc:
            raise RuntimeError(f"cannot load the CA certificate '{config.custom_ca}': {exc.reason or exc}") from None
    context.verify_mode = ssl.CERT_REQUIRED if config.verify_client else ssl.CERT_NONE
    return context


class _ClientFaultFilter(logging.Filter):
    """Drops aiohttp's tracebacks for what a client did wrong (a malformed request line, chunk or compressed body,
    a connection it dropped): each is answered 400 or needs no answer, and a client must not be able to fill the
    server's log with tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, (HttpProcessingError, RequestPayloadError, ConnectionError))


def _quiet_client_faults() -> None:
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ClientFaultFilter) for f in logger.filters):
        logger.addFilter(_ClientFaultFilter())


def _inference_protocol(request: web.Request) -> Optional[str]:
    """The metrics' protocol label of an inference request; None for every other request."""
    resource = request.match_info.route.resource
    if resource is None or rest_group(request.method, resource.canonical) != INFERENCE:
        return None
    return request_metrics.REST_MS if request.path.startswith("/model/") else request_metrics.REST_V2


def _body_bytes(response: Optional[web.StreamResponse]) -> int:
    body = getattr(response, "body", None)
    return len(body) if isinstance(body, bytes) else 0


async def _refuse(request: web.Request) -> web.StreamResponse:
    refusal = error_response(503, SHUTTING_DOWN, "error_msg" if request.path.startswith("/model/") else "error")
    refusal.force_close()
    return refusal


def _admitting(admission: Admission, metrics: RequestMetrics):
    """Middleware: the doors' one admission (``mindserve._frontends.admission.admitted``): requests refused with
    503 once the server drains; those admitted counted until answered, and inference requests counted in
    ``metrics``. While the server drains, every response closes its connection, so that keep-alive clients
    reconnect elsewhere."""

    @web.middleware
    async def admit(request: web.Request, handler):
        response = await admitted(
            admission,
            metrics,
            _inference_protocol(request),
            handler,
            _refuse,
            (request,),
            request.content_length or 0,
            _body_bytes,
        )
        if admission.closed:
            response.force_close()
        return response

    return admit


@web.middleware
async def _json_errors(request: web.Request, handler):
    """Errors aiohttp's router raises (no such endpoint, a method the endpoint does not take) answered as JSON,
    like every other error; the routes answer their own errors and raise none."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        key = "error_msg" if request.path.startswith("/model/") else "error"
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            return error_response(405, f"Method {request.method} is not allowed on {request.path}: use {allowed}", key)
        if exc.status == 404:
            return error_response(
                404, f"No endpoint {request.method} {request.path}; the endpoints are {ENDPOINTS}", key
            )
        return error_response(exc.status, exc.reason, key)


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    """Name the server without aiohttp's default, which tells every client the aiohttp and Python versions."""
    response.headers["Server"] = "mindserve"


def make_app(
    dispatcher: Dispatcher,
    limit: int,
    admission: Admission,
    policy: Optional[AccessPolicy] = None,
    regions: Optional[ClientRegions] = None,
) -> web.Application:
    middlewares = [_admitting(admission, dispatcher.requests), _json_errors]
    if policy is not None:
        middlewares.append(access_middleware(policy))
    app = web.Application(client_max_size=limit, middlewares=middlewares)
    app.on_response_prepare.append(_server_header)
    V2Routes(dispatcher, limit, regions).add_to(app)
    MindSporeRoutes(dispatcher, limit).add_to(app)
    if policy is not None and policy.issuer is not None:
        TokenRoutes(policy.issuer).add_to(app)
    return app


class RestServer:
    """A started REST server listening on one address."""

    def __init__(self, runner: web.AppRunner, address: str, socket_path: Optional[str], port: Optional[int] = None):
        self.runner = runner
        self.address = address  # with the port bound when 0 was asked
        self.port = port  # None for a unix socket
        self.socket_path = socket_path

    @classmethod
    async def start(
        cls,
        address: str,
        dispatcher: Dispatcher,
        max_msg_mb_size: int,
        ssl_config: Optional[SSLConfig],
        drain_grace_s: float,
        admission: Admission,
        limits: ConnectionLimits,
        policy: Optional[AccessPolicy] = None,
        regions: Optional[ClientRegions] = None,
    ) -> "RestServer":
        return await cls.listen(
            address,
            make_app(dispatcher, max_msg_mb_size << 20, admission, policy, regions),
            ssl_config,
            drain_grace_s,
            limits,
        )

    @classmethod
    async def listen(
        cls,
        address: str,
        app: web.Application,
        ssl_config: Optional[SSLConfig],
        drain_grace_s: float,
        limits: ConnectionLimits,
        what: str = "REST server",
    ) -> "RestServer":
        """Serve ``app`` on ``address`` (``host:port`` or ``unix:/path``), with TLS when ``ssl_config`` is given;
        ``what`` names the server in errors."""
        context = ssl_context(ssl_config) if ssl_config else None
        _quiet_client_faults()
        socket_path = unix_socket_path(address)
        host_port = None if socket_path else parse_host_port(address)
        # access_log=None: no per-request log line (aiohttp's would be the hot path's most expensive step);
        # shutdown_timeout: how long stop() lets requests in flight finish; keepalive_timeout: aiohttp arms it
        # when a connection opens and after each response, and closes a connection that has not sent a whole
        # request head by then (a slowloris client, one that connects and says nothing, an idle keep-alive)
        # handler_cancellation: a client that disconnects cancels its request's handler, so that the request's work
        # not yet started is dropped, never run (mindserve._transport.job_flow), as a cancelled gRPC call's is
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=drain_grace_s,
            keepalive_timeout=limits.idle_timeout_s,
            handler_cancellation=True,
        )
        sock = unix_socket(socket_path, "REST server") if socket_path else None
        await runner.setup()
        capped_connections(runner, limits.max_connections)
        try:
            if sock is not None:
                site: web.BaseSite = web.SockSite(runner, sock, ssl_context=context)
            else:
                assert host_port is not None
                site = web.TCPSite(runner, host_port[0], host_port[1], ssl_context=context)
            try:
                await site.start()
            except OSError as exc:
                raise RuntimeError(f"{what} failed to listen on {address}: {exc.strerror or exc}") from None
        except BaseException:
            await runner.cleanup()
            if sock is not None and socket_path is not None:
                sock.close()
                remove_socket_file(socket_path)  # the file this server's bind made
            raise
        if host_port is None:
            return cls(runner, address, socket_path)
        port = runner.addresses[0][1] if runner.addresses else host_port[1]
        return cls(runner, f"{address.rpartition(':')[0]}:{port}", socket_path, port)

    @property
    def open_connections(self) -> int:
        server = self.runner.server
        return len(server.connections) if server is not None else 0

    async def stop(self) -> None:
        """Stop taking connections, let requests in flight finish (within the drain grace given at start), close
        idle keep-alive connections, remove the socket file."""
        try:
            await self.runner.cleanup()
        finally:
            if self.socket_path:
                remove_socket_file(self.socket_path)
