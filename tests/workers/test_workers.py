"""Device workers: versions, several devices, batching by the model's batch size, Python batch stages, and what
happens when a worker process is killed."""

import os
import signal
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
import numpy as np
from mindserve.server import register


def sleep_then_double(x):
    open(os.path.join(os.path.dirname(__file__), "started"), "w").close()  # tells the test the stage runs
    time.sleep(5)
    return x * 2


def pid(x):
    return np.array([os.getpid()], np.int64)


@register.register_method(output_names=["y"])
def slow(x):
    return register.add_stage(sleep_then_double, x, outputs_count=1)


@register.register_method(output_names=["pid"])
def worker_pid(x):
    return register.add_stage(pid, x, outputs_count=1)
"""


def _ask_pid(address: str, servable: str, timeout: float = 20):
    """What ``worker_pid`` answers; a reply that does not come within ``timeout`` s fails the test (no hang)."""
    return Client(address, servable, "worker_pid").infer_async({"x": np.zeros(1, np.float32)}).result(timeout)


def _pid_of(address: str, servable: str) -> int:
    result = _ask_pid(address, servable)
    assert isinstance(result, list), result
    return int(result[0]["pid"][0])


# ---------------------------------------------------------------------------------------------------- versions


@pytest.fixture(scope="module")
def versions_server(servable_dir, tmp_path_factory):
    """versioned started twice, as version 1 and version 2, in one server."""
    tmp = tmp_path_factory.mktemp("versions_server")
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp,
        f"""
        server.start_servables([server.ServableStartConfig({servable_dir!r}, "versioned", device_ids=0,
                                                           version_number=1),
                                server.ServableStartConfig({servable_dir!r}, "versioned", device_ids=0,
                                                           version_number=2)])
        server.start_grpc_server({address!r})
    """,
        address,
    )
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def pair_server(servable_dir, tmp_path_factory):
    """echo on devices 0 and 1, and versioned started with version_number=0."""
    tmp = tmp_path_factory.mktemp("pair_server")
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp,
        f"""
        server.start_servables([server.ServableStartConfig({servable_dir!r}, "echo", device_ids=(0, 1)),
                                server.ServableStartConfig({servable_dir!r}, "versioned", device_ids=0)])
        server.start_grpc_server({address!r})
    """,
        address,
    )
    yield server
    assert server.stop() == 0


def _versioned(address: str, version: int) -> list:
    instances = [{"x": np.array([1.5, -3.0], np.float32)}, {"x": np.array([10.0, 0.25], np.float32)}]
    return Client(address, "versioned", "predict", version_number=version).infer(instances)


@pytest.mark.parametrize("version, offset", [(0, 2.0), (1, 1.0), (2, 2.0)])
def test_two_versions_in_one_server(versions_server, version, offset):
    result = _versioned(versions_server.address, version)
    assert isinstance(result, list) and len(result) == 2, result
    for item, x in zip(result, ([1.5, -3.0], [10.0, 0.25])):
        assert list(item) == ["y"]
        assert item["y"].dtype == np.float32
        np.testing.assert_array_equal(item["y"], np.array(x, np.float32) + np.float32(offset))


def test_unknown_version_is_not_available(versions_server):
    result = _versioned(versions_server.address, 3)
    assert result == {
        "error": "Request servable(versioned) method(predict) version(3) , servable is not available: "
        "the served versions of versioned are 1, 2"
    }


def test_version_number_zero_at_start_serves_the_newest(pair_server):
    for version in (0, 2):
        result = _versioned(pair_server.address, version)
        assert isinstance(result, list), result
        np.testing.assert_array_equal(result[0]["y"], np.array([3.5, -1.0], np.float32))
        np.testing.assert_array_equal(result[1]["y"], np.array([12.0, 2.25], np.float32))
    assert _versioned(pair_server.address, 1) == {
        "error": "Request servable(versioned) method(predict) version(1) , servable is not available: the served "
        "versions of versioned are 2"
    }


# ---------------------------------------------------------------------------------------------------- devices


def test_two_device_workers_are_both_used(pair_server):
    pids = [_pid_of(pair_server.address, "echo") for _ in range(6)]
    assert len(set(pids)) == 2, pids
    assert set(pids) <= set(child_pids(pair_server.proc.pid))
    assert pair_server.proc.pid not in pids


# ---------------------------------------------------------------------------------------------------- batching


def _xs(count: int) -> list:
    return [np.array([i + 0.5, -2.0 * i], np.float32) for i in range(count)]


def test_fixed_batch_size_pads_the_last_batch(echo_server):
    xs = _xs(6)
    result = Client(echo_server.address, "batch", "probe_fixed").infer([{"x": x} for x in xs])
    assert isinstance(result, list) and len(result) == 6, result
    for item, x in zip(result, xs):
        assert sorted(item) == ["n", "y"]
        assert item["y"].dtype == np.float32
        np.testing.assert_array_equal(item["y"], x * 2)
        assert item["n"].dtype == np.int64
        assert item["n"].size == 1 and int(item["n"].reshape(-1)[0]) == 4


def test_dynamic_batch_runs_all_instances_at_once(echo_server):
    xs = _xs(6)
    result = Client(echo_server.address, "batch", "probe_dynamic").infer([{"x": x} for x in xs])
    assert isinstance(result, list) and len(result) == 6, result
    for item, x in zip(result, xs):
        np.testing.assert_array_equal(item["y"], x * 2)
        assert item["n"].size == 1 and int(item["n"].reshape(-1)[0]) == 6


def test_batched_add_keeps_instance_order(echo_server):
    instances = [
        {"x1": np.array([i, 2 * i], np.float32), "x2": np.array([100 * i, -0.5], np.float32)} for i in range(5)
    ]
    result = Client(echo_server.address, "batch", "add_batched").infer(instances)
    assert isinstance(result, list) and len(result) == 5, result
    for item, inst in zip(result, instances):
        assert list(item) == ["y"]
        np.testing.assert_array_equal(item["y"], inst["x1"] + inst["x2"])


def test_model_call_from_python_stage_one_instance(echo_server):
    x1 = np.array([1.25, -7.0], np.float32)
    x2 = np.array([0.75, 3.5], np.float32)
    result = Client(echo_server.address, "batch", "add_by_call").infer([{"x1": x1, "x2": x2}, {"x1": x2, "x2": x2}])
    assert isinstance(result, list) and len(result) == 2, result
    np.testing.assert_array_equal(result[0]["y"], np.array([2.0, -3.5], np.float32))
    np.testing.assert_array_equal(result[1]["y"], np.array([1.5, 7.0], np.float32))
    assert result[0]["y"].dtype == np.float32


def test_model_call_from_python_stage_many_instances(echo_server):
    x1 = np.array([1.0, 2.0], np.float32)
    x2 = np.array([10.0, -20.0], np.float32)
    result = Client(echo_server.address, "batch", "add_by_call_many").infer({"x1": x1, "x2": x2})
    assert isinstance(result, list) and len(result) == 1, result
    item = result[0]
    assert sorted(item) == ["a", "b", "c"]
    np.testing.assert_array_equal(item["a"], np.array([11.0, -18.0], np.float32))
    np.testing.assert_array_equal(item["b"], np.array([2.0, 4.0], np.float32))
    np.testing.assert_array_equal(item["c"], np.array([20.0, -40.0], np.float32))


def test_python_batch_stage_gets_chunks_of_its_batch_size(echo_server):
    xs = [np.array([i, i + 0.5], np.float64) for i in range(5)]
    result = Client(echo_server.address, "echo", "double").infer([{"x": x} for x in xs])
    assert isinstance(result, list) and len(result) == 5, result
    for item, x in zip(result, xs):
        np.testing.assert_array_equal(item["y"], x * 2)
        assert item["y"].dtype == np.float64
    assert [int(item["size"].reshape(-1)[0]) for item in result] == [2, 2, 2, 2, 1]


def test_python_batch_stage_with_batch_size_zero_gets_all(echo_server):
    xs = [np.full((2, 3), i, np.int32) for i in range(4)]
    result = Client(echo_server.address, "echo", "double_all").infer([{"x": x} for x in xs])
    assert isinstance(result, list) and len(result) == 4, result
    for item, x in zip(result, xs):
        assert item["y"].dtype == np.int32
        np.testing.assert_array_equal(item["y"], x * 2)


# ---------------------------------------------------------------------------------------------------- killed workers


@pytest.fixture(scope="module")
def crash_server(tmp_path_factory):
    """echo and slow (a stage that sleeps 5 s), one worker each on device 0 (their own server: the tests kill
    its workers)."""
    tmp = tmp_path_factory.mktemp("crash_server")
    root = str(tmp / "servables")
    servables.write(root, "slow", SLOW_CONFIG)
    servables.write(root, "echo", servables.ECHO_CONFIG)
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp,
        f"""
        server.start_servables([server.ServableStartConfig({root!r}, "echo", device_ids=0),
                                server.ServableStartConfig({root!r}, "slow", device_ids=0)])
        server.start_grpc_server({address!r})
    """,
        address,
    )
    server.servables = root
    yield server
    assert server.stop() == 0


def _wait_for_new_worker(address: str, servable: str, old_pid: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = _ask_pid(address, servable)
        if isinstance(last, list):
            pid = int(last[0]["pid"][0])
            assert pid != old_pid
            return pid
        time.sleep(0.1)
    raise AssertionError(f"no worker of {servable} answered within {timeout} s; last reply {last}")


def test_idle_worker_killed_is_restarted(crash_server):
    address = crash_server.address
    old = _pid_of(address, "echo")
    assert old in child_pids(crash_server.proc.pid)
    os.kill(old, signal.SIGKILL)
    start = time.monotonic()
    result = _ask_pid(address, "echo", timeout=10)  # fails (or succeeds) fast, no hang
    assert time.monotonic() - start < 5
    if isinstance(result, dict):
        assert result["error"] in (
            "Request servable(echo) method(worker_pid) , servable is not available",
            "worker of servable echo version 0 on device 0 exited unexpectedly (exit code -9), the request was not "
            "completed",
        ), result
    else:
        assert int(result[0]["pid"][0]) != old
    new = _wait_for_new_worker(address, "echo", old)
    assert not pid_alive(old)
    assert new in child_pids(crash_server.proc.pid)
    # the restarted worker serves the other methods too
    x = np.array([[1, 2], [3, 4]], np.int16)
    result = Client(address, "echo", "echo").infer({"x": x})
    np.testing.assert_array_equal(result[0]["y"], x)


def test_worker_killed_mid_request_fails_it_with_a_clear_error(crash_server):
    address = crash_server.address
    old = _pid_of(address, "slow")
    pending = Client(address, "slow", "slow").infer_async({"x": np.ones(2, np.float32)})
    started = os.path.join(crash_server.servables, "slow", "started")
    deadline = time.monotonic() + 10
    while not os.path.exists(started):  # the request reaches the worker and its stage starts sleeping
        assert time.monotonic() < deadline, "the slow stage did not start"
        time.sleep(0.02)
    start = time.monotonic()
    os.kill(old, signal.SIGKILL)
    result = pending.result(timeout=10)
    assert time.monotonic() - start < 10
    assert result == {
        "error": "worker of servable slow version 0 on device 0 exited unexpectedly (exit code -9), "
        "the request was not completed"
    }
    # the other servable's worker was not disturbed
    np.testing.assert_array_equal(
        Client(address, "echo", "echo").infer({"x": np.arange(3, dtype=np.int64)})[0]["y"], np.arange(3)
    )
    new = _wait_for_new_worker(address, "slow", old)
    assert new in child_pids(crash_server.proc.pid)
