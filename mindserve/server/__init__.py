"""Serving servables: start device workers for servable directories, serve them over gRPC and REST, stop.

Example::

    from mindserve import server
    server.start_servables(server.ServableStartConfig(servable_directory="servables", servable_name="add",
                                                      device_ids=(0, 1)))
    server.start_grpc_server(address="127.0.0.1:5500")   # or "unix:/tmp/add.sock", ssl_config=SSLConfig(...)
    server.start_restful_server(address="127.0.0.1:1500")  # needs mindserve[rest]

The process keeps serving after the script ends, until ``stop()``, SIGINT or SIGTERM.
"""

from __future__ import annotations

import logging as _logging
import typing as _typing

from mindserve import _defaults
from mindserve._access.config import AccessConfig, JWTConfig
from mindserve._checks import check_int as _check_int
from mindserve._config import MediaStreamConfig, ServableStartConfig, SSLConfig
from mindserve._frontends.listen import check_address as _check_address
from mindserve._frontends.rest import require_aiohttp as _require_aiohttp
from mindserve._master import get_master as _get_master
from mindserve._master import stop as _stop
from mindserve._server_handle import ServerHandle
from mindserve.server import context, register

if _typing.TYPE_CHECKING:  # (only the documented names are this module's: see tests/e2e/test_public_api.py)
    from typing import Optional, Sequence, Union

__all__ = [
    "AccessConfig",
    "JWTConfig",
    "MediaStreamConfig",
    "ServableStartConfig",
    "ServerHandle",
    "SSLConfig",
    "context",
    "register",
    "start_servables",
    "start_grpc_server",
    "start_restful_server",
    "start_metrics_server",
    "stop",
]


def _configure_logging() -> None:
    logger = _logging.getLogger("mindserve")
    if not logger.handlers and not _logging.getLogger().handlers:
        handler = _logging.StreamHandler()
        handler.setFormatter(_logging.Formatter("[mindserve] %(levelname)s %(message)s"))
        logger.addHandler(handler)
        if logger.level == _logging.NOTSET:  # (a level set before, such as mindserve serve's --log-level, stays)
            logger.setLevel(_logging.INFO)


def start_servables(servable_configs: Union[ServableStartConfig, Sequence[ServableStartConfig]]) -> None:
    """Start the workers of one or more servables (or versions of one) and return once all are ready.

    Raises RuntimeError naming the problem (missing directory, file or version, an error in servable_config.py,
    a model that fails to load) and then leaves nothing of these servables running.
    """
    configs = [servable_configs] if isinstance(servable_configs, ServableStartConfig) else list(servable_configs)
    for config in configs:
        if not isinstance(config, ServableStartConfig):
            raise RuntimeError(
                f"The item of parameter 'servable_configs' should be ServableStartConfig, but actually {type(config)}"
            )
    _configure_logging()
    master = _get_master()
    master.call(master.start_servables(configs))


def start_grpc_server(
    address: str,
    max_msg_mb_size: int = _defaults.MAX_MSG_MB_SIZE,
    ssl_config: Optional[SSLConfig] = None,
    access: Optional[AccessConfig] = None,
    media_stream: Optional[MediaStreamConfig] = None,
    allow_client_shm: bool = False,
) -> ServerHandle:
    """Serve MSService, the Open Inference Protocol (``inference.GRPCInferenceService``), gRPC health and server
    reflection on ``address``: ``"host:port"`` or ``"unix:/path"`` (a socket file only the owner may use).
    ``max_msg_mb_size`` in [1, 512] bounds request and reply sizes; ``ssl_config`` turns on TLS; ``access``
    (an AccessConfig) decides who may call which group of methods. The video-analytics extension
    (MediaGraphExtension/ProcessMediaStream) runs what a stream's descriptor names, else ``media_stream`` (a
    MediaStreamConfig). ``allow_client_shm`` lets clients on this host register their shared memory regions and
    send tensors through them (Triton's system shared memory extension; see README "Shared memory"): off by
    default. Returns a ServerHandle (``.address``, ``.port``, the one bound for port 0; ``.stop()``; a
    context manager)."""
    _check_address(address)
    _check_int("max_msg_mb_size", max_msg_mb_size, 1, 512)
    if ssl_config is not None and not isinstance(ssl_config, SSLConfig):
        raise RuntimeError("The type of ssl_config should be type of SSLConfig")
    if media_stream is not None and not isinstance(media_stream, MediaStreamConfig):
        raise RuntimeError("The type of media_stream should be type of MediaStreamConfig")
    _check_bool("allow_client_shm", allow_client_shm)
    _configure_logging()
    master = _get_master()
    return ServerHandle(
        "gRPC",
        master,
        master.call(
            master.start_grpc_server(address, max_msg_mb_size, ssl_config, access, media_stream, allow_client_shm)
        ),
    )


def start_restful_server(
    address: str,
    max_msg_mb_size: int = _defaults.MAX_MSG_MB_SIZE,
    ssl_config: Optional[SSLConfig] = None,
    idle_timeout: float = _defaults.IDLE_TIMEOUT_S,
    max_connections: int = _defaults.MAX_CONNECTIONS,
    access: Optional[AccessConfig] = None,
    allow_client_shm: bool = False,
) -> ServerHandle:
    """Serve HTTP/1.1 REST on ``address``: ``"host:port"`` or ``"unix:/path"`` (a socket file only the owner may
    use, removed at stop), with TLS (mutual TLS with ``verify_client``) when ``ssl_config`` is given.

    Endpoints: the Open Inference Protocol's REST form (KServe v2: ``/v2/health/live``, ``/v2/health/ready``,
    ``/v2``, ``/v2/models/{model}[/versions/{version}]`` with ``/ready`` and ``/infer``, JSON and binary tensor
    data, as ``tritonclient.http`` speaks it) and MindSpore Serving's form,
    ``POST /model/{servable}[/version/{version}]:{method}`` with ``{"instances": [...]}``.
    A request body larger than ``max_msg_mb_size`` (1 to 512) MB is answered 413. A connection that has not sent
    a whole request head ``idle_timeout`` seconds after it opened or after its last response is closed (slow or
    silent clients, idle keep-alive); past ``max_connections`` open connections a new one is answered 503 and
    closed. ``access`` (an AccessConfig) decides who may call which group of endpoints; with ``consumers`` it
    also serves their token endpoints (``/token``, ``/oauth/token``). ``allow_client_shm`` serves Triton's
    system shared memory endpoints (``/v2/systemsharedmemory/...``) and tensors in registered regions, as
    ``start_grpc_server``'s does (the servers share the regions). Several REST servers may be started;
    ``stop()`` drains and stops them all. Returns a ServerHandle, as ``start_grpc_server``. Needs aiohttp:
    ``pip install 'mindserve[rest]'``.
    """
    _check_address(address)
    _check_int("max_msg_mb_size", max_msg_mb_size, 1, 512)
    if ssl_config is not None and not isinstance(ssl_config, SSLConfig):
        raise RuntimeError("The type of ssl_config should be type of SSLConfig")
    if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float)) or not 0 < idle_timeout <= 3600:
        raise RuntimeError(f"Parameter 'idle_timeout' should be a number in (0, 3600], but actually {idle_timeout!r}")
    _check_int("max_connections", max_connections, 1)
    _check_bool("allow_client_shm", allow_client_shm)
    _require_aiohttp()
    _configure_logging()
    master = _get_master()
    return ServerHandle(
        "REST",
        master,
        master.call(
            master.start_restful_server(
                address, max_msg_mb_size, ssl_config, float(idle_timeout), max_connections, access, allow_client_shm
            )
        ),
    )


def start_metrics_server(
    address: str = _defaults.METRICS_ADDRESS,
    ssl_config: Optional[SSLConfig] = None,
    access: Optional[AccessConfig] = None,
) -> ServerHandle:
    """Serve Prometheus metrics, ``GET /metrics`` in the text format, on ``address`` (``"host:port"`` or
    ``"unix:/path"``), with TLS when ``ssl_config`` is given and ``access`` guarding the group ``metrics``.

    The metrics count every inference request by servable, version, method and protocol (success, failure by
    reason, duration), what the workers measure (queue wait, each stage's duration, batch sizes, executions)
    and the workers' state (up, restarts) and pending requests; see README "Metrics". Returns a ServerHandle.
    Needs aiohttp and prometheus-client: ``pip install 'mindserve[metrics]'``.
    """
    _check_address(address)
    if ssl_config is not None and not isinstance(ssl_config, SSLConfig):
        raise RuntimeError("The type of ssl_config should be type of SSLConfig")
    _require_aiohttp()
    _require_prometheus()
    _configure_logging()
    master = _get_master()
    return ServerHandle("metrics", master, master.call(master.start_metrics_server(address, ssl_config, access)))


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise RuntimeError(f"Parameter '{name}' should be bool, but actually {type(value)}")


def _require_prometheus() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise RuntimeError("the metrics server needs prometheus-client: pip install 'mindserve[metrics]'") from None


def stop() -> None:
    """Stop serving: let requests in progress finish, end every worker, remove unix socket files."""
    _stop()
