"""A serving process's life: stop() from the script, SIGTERM and SIGINT, draining requests in flight, and a master
that is killed outright."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mindserve.client import Client
from support import servables
from support.processes import child_pids, free_port, pid_alive, start_server

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

SLOW_CONFIG = """
import os
import time
from mindserve.server import register


def sleep_then_double(x):
    open(os.path.join(os.path.dirname(__file__), "started"), "w").close()  # tells the test the stage runs
    time.sleep(1)
    return x * 2


@register.register_method(output_names=["y"])
def slow(x):
    return register.add_stage(sleep_then_double, x, outputs_count=1)
"""


@pytest.fixture
def slow_dir(tmp_path) -> str:
    root = str(tmp_path / "servables")
    servables.write(root, "slow", SLOW_CONFIG)
    return root


def _wait_for_file(path: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)


def _worker_pids(address: str, count: int) -> set:
    """The pids of the echo workers, from ``worker_pid`` requests until ``count`` different ones answered."""
    pids = set()
    for _ in range(4 * count):
        result = Client(address, "echo", "worker_pid").infer_async({"x": np.zeros(1, np.float32)}).result(20)
        assert isinstance(result, list), result
        pids.add(int(result[0]["pid"][0]))
        if len(pids) == count:
            break
    assert len(pids) == count, pids
    return pids


def _wait_gone(pids, timeout: float) -> list:
    """The pids still alive after waiting up to ``timeout`` seconds for them to end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if pid_alive(p)]
        if not alive:
            return []
        time.sleep(0.1)
    return [p for p in pids if pid_alive(p)]


def test_stop_called_by_the_script_ends_the_process(servable_dir, tmp_path):
    sock = tmp_path / "self_stop.sock"
    flag = tmp_path / "stop-now"
    address = f"unix:{sock}"
    server = start_server(
        tmp_path,
        f"""
        import os, time
        server.start_servables(server.ServableStartConfig({servable_dir!r}, "echo", device_ids=(0, 1)))
        server.start_grpc_server({address!r})
        print("READY", flush=True)
        while not os.path.exists({str(flag)!r}):
            time.sleep(0.05)
        server.stop()
        print("STOPPED", flush=True)
    """,
        address,
    )
    try:
        assert sock.exists()
        assert (sock.stat().st_mode & 0o777) == 0o600
        pids = _worker_pids(address, 2)
        assert pids <= set(child_pids(server.proc.pid))
        x = np.array([1.5, 2.5], np.float32)
        np.testing.assert_array_equal(Client(address, "echo", "echo").infer({"x": x})[0]["y"], x)
        flag.write_text("")
        code = server.proc.wait(30)
    finally:
        server.stop(signal.SIGKILL)
    assert code == 0, server.output
    assert "STOPPED" in server.output
    assert [p for p in pids if pid_alive(p)] == []
    assert not sock.exists()


def test_a_script_that_dies_of_an_exception_stops_its_workers_and_exits_non_zero(servable_dir, tmp_path):
    # a new user's typo after start_servables: the traceback, then the end of the process, never a hang
    sock = tmp_path / "dies.sock"
    address = f"unix:{sock}"
    server = start_server(
        tmp_path,
        f"""
        import os, time
        server.start_servables(server.ServableStartConfig({servable_dir!r}, "echo", device_ids=0))
        server.start_grpc_server({address!r})
        print("READY", flush=True)
        while not os.path.exists({str(tmp_path / "go")!r}):
            time.sleep(0.05)
        undefined_name_here
    """,
        address,
    )
    try:
        pids = set(child_pids(server.proc.pid))
        assert pids
        (tmp_path / "go").write_text("")
        code = server.proc.wait(30)
        assert server.proc.stdout is not None
        server.output += server.proc.stdout.read()
    finally:
        server.stop(signal.SIGKILL)
    assert code == 1, server.output
    assert "NameError: name 'undefined_name_here' is not defined" in server.output
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in pids if pid_alive(p)] == []
    assert not sock.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_server(servable_dir, tmp_path, sig):
    sock = tmp_path / "signal.sock"
    unix_address = f"unix:{sock}"
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp_path,
        f"""
        server.start_servables(server.ServableStartConfig({servable_dir!r}, "echo", device_ids=(0, 1)))
        server.start_grpc_server({address!r})
        server.start_grpc_server({unix_address!r})
    """,
        address,
    )
    try:
        pids = _worker_pids(address, 2)
        assert pids == set(child_pids(server.proc.pid))
        assert _worker_pids(unix_address, 2) == pids
        assert sock.exists()
    finally:
        code = server.stop(sig)
    assert code == 0, server.output
    assert [p for p in pids if pid_alive(p)] == []
    assert not sock.exists()
    assert "Traceback" not in server.output


def test_sigterm_drains_requests_in_flight(slow_dir, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp_path,
        f"""
        server.start_servables(server.ServableStartConfig({slow_dir!r}, "slow", device_ids=0))
        server.start_grpc_server({address!r})
    """,
        address,
    )
    try:
        x = np.array([[1, -2], [3, 4]], np.int32)
        pending = Client(address, "slow", "slow").infer_async({"x": x})
        _wait_for_file(os.path.join(slow_dir, "slow", "started"))  # the request is in the sleeping stage
        server.proc.send_signal(signal.SIGTERM)
        result = pending.result(timeout=20)
        # wait for the exit without signalling again (ServerProcess.stop would send a second SIGTERM to a
        # process still finishing; one that lands after Python restored the default handlers ends it with -15)
        code = server.proc.wait(30)
    finally:
        server.stop(signal.SIGKILL)
    assert isinstance(result, list), result
    assert result[0]["y"].dtype == np.int32
    np.testing.assert_array_equal(result[0]["y"], x * 2)
    assert code == 0, server.output


def test_second_sigterm_while_draining_is_harmless(slow_dir, tmp_path):
    """A second SIGTERM (or Ctrl-C pressed twice) while the first one drains: the request in flight still gets
    its result, and the process ends as after one signal, without a traceback."""
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp_path,
        f"""
        server.start_servables(server.ServableStartConfig({slow_dir!r}, "slow", device_ids=0))
        server.start_grpc_server({address!r})
    """,
        address,
    )
    try:
        x = np.array([0.5, 8.0], np.float32)
        pending = Client(address, "slow", "slow").infer_async({"x": x})
        _wait_for_file(os.path.join(slow_dir, "slow", "started"))
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # the first signal's shutdown is draining the request (its stage sleeps 1 s)
        server.proc.send_signal(signal.SIGTERM)
        result = pending.result(timeout=20)
        code = server.proc.wait(30)
    finally:
        server.stop(signal.SIGKILL)
    assert isinstance(result, list), result
    np.testing.assert_array_equal(result[0]["y"], x * 2)
    assert code == 0, server.output
    assert "Traceback" not in server.output, server.output


def test_workers_exit_when_the_master_is_killed(servable_dir, tmp_path):
    address = f"unix:{tmp_path}/killed.sock"
    server = start_server(
        tmp_path,
        f"""
        server.start_servables(server.ServableStartConfig({servable_dir!r}, "echo", device_ids=(0, 1)))
        server.start_grpc_server({address!r})
    """,
        address,
    )
    try:
        pids = _worker_pids(address, 2)
    finally:
        code = server.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert _wait_gone(pids, 10) == []


def test_server_handles_ports_stop_and_start_again_in_one_process(servable_dir, tmp_path):
    # one script: servers on port 0 with their real ports, a handle stopped alone, a context manager, then
    # server.stop() and everything started again in the same process
    script = tmp_path / "handles.py"
    script.write_text(f"""
import numpy as np, urllib.request
from mindserve import server
from mindserve.client import Client

def echo(address):
    return Client(address, "echo", "echo", timeout=30).infer({{"x": np.float32(2.5)}})

for round_ in (1, 2):
    server.start_servables(server.ServableStartConfig({servable_dir!r}, "echo", device_ids=0))
    grpc_a = server.start_grpc_server("127.0.0.1:0")
    grpc_b = server.start_grpc_server("127.0.0.1:0")
    assert grpc_a.port and grpc_a.address == f"127.0.0.1:{{grpc_a.port}}" and grpc_a.port != grpc_b.port
    assert float(echo(grpc_a.address)[0]["y"]) == 2.5
    grpc_a.stop()
    grpc_a.stop()  # a second stop does nothing
    assert echo(grpc_a.address)["error"].startswith("Grpc Error, (14, 'unavailable')"), echo(grpc_a.address)
    assert float(echo(grpc_b.address)[0]["y"]) == 2.5  # the other server goes on
    with server.start_restful_server("127.0.0.1:0") as rest:
        with urllib.request.urlopen(f"http://{{rest.address}}/v2/health/live", timeout=30) as reply:
            assert reply.status == 200
    try:
        urllib.request.urlopen(f"http://{{rest.address}}/v2/health/live", timeout=30)
        raise AssertionError("the REST server still answers after its block")
    except OSError:
        pass
    metrics = server.start_metrics_server("127.0.0.1:0")
    assert metrics.port and metrics.address == f"127.0.0.1:{{metrics.port}}"
    with urllib.request.urlopen(f"http://{{metrics.address}}/metrics", timeout=30) as reply:
        assert b'mindserve_worker_up{{device="0",servable="echo",version="0"}} 1.0' in reply.read()
    server.stop()
    assert echo(grpc_b.address)["error"].startswith("Grpc Error, (14, 'unavailable')")
    grpc_b.stop()  # after server.stop(): nothing to do
    print("ROUND", round_, flush=True)
print("DONE", flush=True)
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert (done.returncode, done.stdout) == (0, "ROUND 1\nROUND 2\nDONE\n"), done.stderr


HELD_CONFIG = """
import os
import time
from mindserve.server import register

HERE = os.path.dirname(__file__)


def held(x):
    open(os.path.join(HERE, "started"), "w").close()
    deadline = time.monotonic() + 60
    while os.path.exists(os.path.join(HERE, "hold")) and time.monotonic() < deadline:
        time.sleep(0.01)
    return x


@register.register_method(output_names=["y"])
def echo(x):
    return register.add_stage(held, x, outputs_count=1)
"""


def test_sigterm_turns_health_not_serving_at_once_then_drains_then_exits(tmp_path):
    """What a load balancer and Kubernetes rely on: at SIGTERM the gRPC health status turns NOT_SERVING while the
    request in flight is still running, new requests are refused UNAVAILABLE (clients retry elsewhere), the
    request in flight is answered, and only then does the process exit, with code 0."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    root = str(tmp_path / "servables")
    folder = servables.write(root, "held", HELD_CONFIG)
    hold, started = os.path.join(folder, "hold"), os.path.join(folder, "started")
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp_path,
        f"""
        server.start_servables(server.ServableStartConfig({root!r}, "held", device_ids=0))
        server.start_grpc_server({address!r})
    """,
        address,
    )
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    try:
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == serving
        open(hold, "w").close()
        x = np.array([1.5, 2.5], np.float32)
        pending = Client(address, "held", "echo").infer_async({"x": x})
        _wait_for_file(started)
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            != health_pb2.HealthCheckResponse.NOT_SERVING
        ):
            assert time.monotonic() < deadline, "health did not turn NOT_SERVING"
            time.sleep(0.02)
        assert server.proc.poll() is None  # still running: the request in flight holds the drain
        refused = Client(address, "held", "echo").infer({"x": x})
        assert refused == {
            "error": "Grpc Error, (14, 'unavailable'), the server is shutting down: send the request "
            "again, to another replica"
        }
        os.unlink(hold)
        result = pending.result(timeout=20)
        code = server.proc.wait(30)
    finally:
        channel.close()
        if os.path.exists(hold):
            os.unlink(hold)
        server.stop(signal.SIGKILL)
    np.testing.assert_array_equal(result[0]["y"], x)
    assert code == 0, server.output
