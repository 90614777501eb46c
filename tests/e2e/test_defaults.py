"""Every default setting is defined once (mindserve._defaults): the public API's arguments, the servable start
config, the master's bounds and the command line's settings all agree with it."""

from __future__ import annotations

import inspect

from mindserve import _defaults, server
from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._frontends.stream_memory import StreamMemory
from mindserve._supervision.worker_process import WorkerSpec
from mindserve.cli.config import ServableSettings, ServeConfig


def _default(function, name):
    return inspect.signature(function).parameters[name].default


def test_the_public_api_takes_its_defaults_from_one_place():
    assert _default(server.start_grpc_server, "max_msg_mb_size") == _defaults.MAX_MSG_MB_SIZE
    assert _default(server.start_restful_server, "max_msg_mb_size") == _defaults.MAX_MSG_MB_SIZE
    assert _default(server.start_restful_server, "idle_timeout") == _defaults.IDLE_TIMEOUT_S
    assert _default(server.start_restful_server, "max_connections") == _defaults.MAX_CONNECTIONS
    assert _default(server.start_metrics_server, "address") == _defaults.METRICS_ADDRESS
    config = server.ServableStartConfig("servables", "add")
    assert (
        config.device_ids,
        config.max_batch_size,
        config.max_batch_delay_ms,
        config.shm_size_mb,
        config.num_parallel_workers,
    ) == (
        _defaults.DEVICE_IDS,
        _defaults.MAX_BATCH_SIZE,
        _defaults.MAX_BATCH_DELAY_MS,
        _defaults.SHM_SIZE_MB,
        _defaults.NUM_PARALLEL_WORKERS,
    )


def test_the_master_and_the_workers_start_from_the_same_defaults():
    dispatcher = Dispatcher()
    assert dispatcher.max_enqueued_requests == _defaults.MAX_ENQUEUED_REQUESTS
    assert dispatcher.max_request_instances == _defaults.MAX_REQUEST_INSTANCES
    assert dispatcher.restart_wait_s == _defaults.RESTART_WAIT_S
    assert StreamMemory().limit == _defaults.MAX_STREAM_MEMORY_MB << 20
    spec = WorkerSpec("servables", "add", 1, 0, None)
    assert (spec.max_batch_size, spec.max_batch_delay_ms, spec.shm_size_mb) == (
        _defaults.MAX_BATCH_SIZE,
        _defaults.MAX_BATCH_DELAY_MS,
        _defaults.SHM_SIZE_MB,
    )


def test_the_command_line_starts_from_the_same_defaults():
    serve = ServeConfig(servables=())
    assert (serve.grpc_address, serve.rest_address, serve.metrics_address) == (
        _defaults.GRPC_ADDRESS,
        _defaults.REST_ADDRESS,
        _defaults.METRICS_ADDRESS,
    )
    assert (
        serve.max_msg_mb_size,
        serve.max_enqueued_requests,
        serve.max_request_instances,
        serve.max_stream_memory_mb,
    ) == (
        _defaults.MAX_MSG_MB_SIZE,
        _defaults.MAX_ENQUEUED_REQUESTS,
        _defaults.MAX_REQUEST_INSTANCES,
        _defaults.MAX_STREAM_MEMORY_MB,
    )
    servable = ServableSettings("servables", "add")
    assert (
        servable.device_ids,
        servable.max_batch_size,
        servable.max_batch_delay_ms,
        servable.shm_size_mb,
        servable.num_parallel_workers,
    ) == (
        _defaults.DEVICE_IDS,
        _defaults.MAX_BATCH_SIZE,
        _defaults.MAX_BATCH_DELAY_MS,
        _defaults.SHM_SIZE_MB,
        _defaults.NUM_PARALLEL_WORKERS,
    )
