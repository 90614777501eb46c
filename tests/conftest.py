"""Shared fixtures (servable directories, servers run as real processes, TLS certificates made by trustme). The
helpers behind them live in the ``support`` package (tests/support/), which every test module imports from;
nothing imports this file.

A test module that starts real processes (servers, workers, tools) says so itself, ``pytestmark =
pytest.mark.server`` (the marker is declared in pyproject.toml), so that ``pytest -m "not server"`` runs the
in-process tests alone, in seconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support import servables
from support.paths import BUNDLED_SERVABLES
from support.processes import ServerProcess, free_port, start_server
from support.tls import make_tls_files


@pytest.fixture(scope="session")
def servable_dir(tmp_path_factory) -> str:
    """A folder of test servables: echo, batch, versioned (see support/servables.py)."""
    return servables.make_all(str(tmp_path_factory.mktemp("servables")))


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> dict:
    """PEM files: a CA and a server certificate for localhost/127.0.0.1, a client certificate from the same CA,
    and a second CA with its own client certificate (for the refused cases)."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def echo_server(servable_dir, tmp_path_factory) -> Iterator[ServerProcess]:
    """The echo and batch servables on TCP, one worker each (shared by the tests that only send requests)."""
    tmp = tmp_path_factory.mktemp("echo_server")
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp,
        f"""
        server.start_servables([server.ServableStartConfig({servable_dir!r}, "echo", device_ids=0),
                                server.ServableStartConfig({servable_dir!r}, "batch", device_ids=0)])
        server.start_grpc_server({address!r})
    """,
        address,
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def add_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """The bundled add servable with two device workers, on TCP and on a unix socket."""
    tmp = tmp_path_factory.mktemp("add_server")
    address = f"127.0.0.1:{free_port()}"
    unix_address = f"unix:{tmp}/add.sock"
    server = start_server(
        tmp,
        f"""
        server.start_servables(server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=(0, 1)))
        server.start_grpc_server({address!r})
        server.start_grpc_server({unix_address!r})
    """,
        address,
    )
    server.unix_address = unix_address
    yield server
    server.stop()
