"""The public names of mindserve.server and mindserve.client are exactly the documented ones: anything else a
user could import from them would become a contract by accident."""

from __future__ import annotations
import __future__

import types

import mindserve.client
import mindserve.server
import mindserve.server.context
import mindserve.server.register


def _public(module: types.ModuleType) -> set:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, __future__._Feature)
    }


def test_server_names():
    names = {
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
    }
    assert _public(mindserve.server) == names == set(mindserve.server.__all__)


def test_context_names():
    names = {
        "set_max_enqueued_requests",
        "set_max_request_instances",
        "set_max_stream_memory_mb",
        "set_worker_restart_wait",
        "set_client_shm_owners",
    }
    assert _public(mindserve.server.context) == names == set(mindserve.server.context.__all__)


def test_client_names():
    assert (
        _public(mindserve.client)
        == {"Client", "ClientAsyncResult", "SSLConfig", "aio"}
        == set(mindserve.client.__all__)
    )
    assert _public(mindserve.client.aio) == {"Client", "SSLConfig"} == set(mindserve.client.aio.__all__)


def test_register_names():
    assert {"declare_model", "register_method", "add_stage", "Model"} <= set(mindserve.server.register.__all__)


def test_packages_are_typed():
    import os

    for package in (mindserve.server, mindserve.client):
        assert package.__file__ is not None  # both are packages with an __init__.py
        root = (
            os.path.dirname(os.path.dirname(package.__file__))
            if package is mindserve.server
            else os.path.dirname(package.__file__)
        )
        assert os.path.exists(os.path.join(root, "py.typed")), root
