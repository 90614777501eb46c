"""Shared fixtures: servable directories, servers run as real processes, TLS certificates made by trustme."""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import Optional

import pytest

import servable_factory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# what a test module does when it starts real server processes (its tests get the "server" marker, so that
# `pytest -m "not server"` runs the in-process tests alone, in seconds)
_SERVER_SIGNS = ("start_server(", "start_example_server(", "echo_server", "add_server", "subprocess.", "Popen(")


def pytest_collection_modifyitems(config, items) -> None:
    sources: dict = {}
    for item in items:
        path = str(item.fspath)
        if path not in sources:
            with open(path) as f:
                text = f.read()
            sources[path] = any(sign in text for sign in _SERVER_SIGNS)
        if sources[path]:
            item.add_marker(pytest.mark.server)
BUNDLED_SERVABLES = os.path.join(REPO, "servables")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class ServerProcess:
    """A server script running in its own process; ``output`` is what it printed."""

    def __init__(self, proc: subprocess.Popen, address: str):
        self.proc = proc
        self.address = address
        self.output = ""

    def read_until(self, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while marker not in self.output:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not select.select([self.proc.stdout], [], [], 0)[0]:
                raise RuntimeError(f"server did not print {marker!r}; it printed:\n{self.output}")
            if select.select([self.proc.stdout], [], [], min(left, 0.5))[0]:
                # os.read, not readline: a buffered reader could hold a second line that select cannot see
                self.output += os.read(self.proc.stdout.fileno(), 65536).decode(errors="replace")
        return self.output

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the server and wait for it to exit; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.output += self.proc.stdout.read()
        return code


def start_server(tmp_path, body: str, address: str, timeout: float = 90) -> ServerProcess:
    """Run a server script (``body`` runs after ``from mindserve import server``; it must start a server on
    ``address``) in a new process and wait until it serves."""
    script = tmp_path / f"server_{abs(hash((body, address)))}.py"
    script.write_text("import sys\nfrom mindserve import server\n" + textwrap.dedent(body)
                      + "\nprint('READY', flush=True)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=str(tmp_path))
    server = ServerProcess(proc, address)
    try:
        server.read_until("READY", timeout)
    except Exception:
        server.stop(signal.SIGKILL)
        raise
    return server


@pytest.fixture(scope="session")
def servable_dir(tmp_path_factory) -> str:
    """A folder of test servables: echo, batch, versioned (see servable_factory)."""
    return servable_factory.make_all(str(tmp_path_factory.mktemp("servables")))


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> dict:
    """PEM files: a CA and a server certificate for localhost/127.0.0.1, a client certificate from the same CA,
    and a second CA with its own client certificate (for the refused cases)."""
    import trustme

    root = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    other_ca = trustme.CA()
    server_cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    client_cert = ca.issue_cert("client@mindserve.test")
    stranger_cert = other_ca.issue_cert("stranger@mindserve.test")
    files = {}

    def dump(name: str, blob) -> None:
        path = root / name
        blob.write_to_path(str(path))
        files[name] = str(path)

    dump("ca.pem", ca.cert_pem)
    dump("other_ca.pem", other_ca.cert_pem)
    dump("server.pem", server_cert.cert_chain_pems[0])
    dump("server.key", server_cert.private_key_pem)
    dump("client.pem", client_cert.cert_chain_pems[0])
    dump("client.key", client_cert.private_key_pem)
    dump("stranger.pem", stranger_cert.cert_chain_pems[0])
    dump("stranger.key", stranger_cert.private_key_pem)
    return files


@pytest.fixture(scope="session")
def echo_server(servable_dir, tmp_path_factory) -> ServerProcess:
    """The echo and batch servables on TCP, one worker each (shared by the tests that only send requests)."""
    tmp = tmp_path_factory.mktemp("echo_server")
    address = f"127.0.0.1:{free_port()}"
    server = start_server(tmp, f"""
        server.start_servables([server.ServableStartConfig({servable_dir!r}, "echo", device_ids=0),
                                server.ServableStartConfig({servable_dir!r}, "batch", device_ids=0)])
        server.start_grpc_server({address!r})
    """, address)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def add_server(tmp_path_factory) -> ServerProcess:
    """The bundled add servable with two device workers, on TCP and on a unix socket."""
    tmp = tmp_path_factory.mktemp("add_server")
    address = f"127.0.0.1:{free_port()}"
    unix_address = f"unix:{tmp}/add.sock"
    server = start_server(tmp, f"""
        server.start_servables(server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=(0, 1)))
        server.start_grpc_server({address!r})
        server.start_grpc_server({unix_address!r})
    """, address)
    server.unix_address = unix_address
    yield server
    server.stop()
