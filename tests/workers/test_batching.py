"""Batching across requests in the worker pool: instances of concurrent requests run together (up to
max_batch_size, waiting at most max_batch_delay_ms for the batch to fill), results go back to the right requests
in order, the request queue is bounded, large requests are split into jobs that fit the shared memory, and that
shared memory has no name and owner-only access.

No timing is asserted: a batch that must form is made to wait for its last instance with a long delay (the
delay is only a bound), and what a stage saw is read from its outputs.
"""

import os
import re
import stat
import time

import grpc
import numpy as np
import pytest

from mindserve.client import Client
from support import servables
from support.processes import child_pids, free_port, start_server

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

RESULT_TIMEOUT_S = 60  # every reply is waited for at most this long


def _scalar(value) -> int:
    array = np.asarray(value)
    assert array.size == 1, array
    return int(array.reshape(-1)[0])


def _results(pending: list) -> list:
    return [p.result(RESULT_TIMEOUT_S) for p in pending]


def _check_record(result, xs: list, batch: int) -> int:
    """A ``record`` reply to a request of the instances ``xs``: each its own x back, the batch size ``batch``;
    returns the worker pid (the same for every instance)."""
    assert isinstance(result, list) and len(result) == len(xs), result
    pids = set()
    for item, x in zip(result, xs):
        assert sorted(item) == ["batch", "pid", "y"], item
        assert item["y"].dtype == x.dtype and item["y"].shape == x.shape
        np.testing.assert_array_equal(item["y"], x)
        assert _scalar(item["batch"]) == batch, item
        pids.add(_scalar(item["pid"]))
    assert len(pids) == 1, pids
    return pids.pop()


@pytest.fixture(scope="module")
def batching_dir(tmp_path_factory) -> str:
    return servables.make_batching(str(tmp_path_factory.mktemp("batching_servables")))


@pytest.fixture(scope="module")
def waiting_server(batching_dir, tmp_path_factory):
    """recorder and modelrec batching up to 4 instances, fixedrec (model batch size 2) up to 3; each worker
    waits up to 60 s for its batch to fill (one worker each)."""
    tmp = tmp_path_factory.mktemp("waiting_server")
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp,
        f"""
        server.start_servables([
            server.ServableStartConfig({batching_dir!r}, "recorder", device_ids=0, max_batch_size=4,
                                       max_batch_delay_ms=60000),
            server.ServableStartConfig({batching_dir!r}, "modelrec", device_ids=0, max_batch_size=4,
                                       max_batch_delay_ms=60000),
            server.ServableStartConfig({batching_dir!r}, "fixedrec", device_ids=0, max_batch_size=3,
                                       max_batch_delay_ms=60000)])
        server.start_grpc_server({address!r})
    """,
        address,
    )
    yield server
    assert server.stop() == 0, server.output


# ---------------------------------------------------------------------------------------------------- Python stage


def test_single_instance_requests_run_as_one_batch(waiting_server):
    client = Client(waiting_server.address, "recorder", "record")
    xs = [np.array([i + 0.5, -3.0 * i], np.float32) for i in range(4)]
    pending = [client.infer_async({"x": x}) for x in xs]
    pids = {_check_record(result, [x], batch=4) for result, x in zip(_results(pending), xs)}
    assert len(pids) == 1
    assert pids <= set(child_pids(waiting_server.proc.pid))


def test_instances_of_different_types_share_a_batch(waiting_server):
    """A Python batch stage takes instances of any dtype and shape together; each gets its own value back."""
    client = Client(waiting_server.address, "recorder", "record")
    xs = [
        np.arange(6, dtype=np.int16).reshape(2, 3),
        np.array([1.25, -2.5], np.float64),
        np.array(7, np.int64),
        np.array([[True, False]]),
    ]
    pending = [client.infer_async({"x": x}) for x in xs]
    for result, x in zip(_results(pending), xs):
        _check_record(result, [x], batch=4)


def test_two_requests_of_two_instances_run_as_one_batch(waiting_server):
    client = Client(waiting_server.address, "recorder", "record")
    requests = [[np.full((3,), 10 * r + i, np.int32) for i in range(2)] for r in range(2)]
    pending = [client.infer_async([{"x": x} for x in xs]) for xs in requests]
    for result, xs in zip(_results(pending), requests):
        _check_record(result, xs, batch=4)


def test_request_larger_than_max_batch_size_runs_alone_and_whole(waiting_server):
    """A job is never split by the worker's pop: a request of 6 instances with max_batch_size=4 is taken on its
    own at once, and a batch_size=0 stage gets all 6."""
    client = Client(waiting_server.address, "recorder", "record")
    xs = [np.array([i, -i], np.int64) for i in range(6)]
    _check_record(client.infer_async([{"x": x} for x in xs]).result(RESULT_TIMEOUT_S), xs, batch=6)


# ---------------------------------------------------------------------------------------------------- model stage


def _check_model(result, xs: list, n, batch: int) -> None:
    """A probe model reply (y = x * 2, n = what the model ran on) followed by the recording batch stage."""
    assert isinstance(result, list) and len(result) == len(xs), result
    for item, x in zip(result, xs):
        assert sorted(item) == ["batch", "n", "pid", "y"], item
        assert item["y"].dtype == np.float32
        np.testing.assert_array_equal(item["y"], x * 2)
        assert item["n"].dtype == np.int64
        np.testing.assert_array_equal(item["n"], n(x))
        assert _scalar(item["batch"]) == batch, item


def test_dynamic_batch_model_runs_requests_together(waiting_server):
    client = Client(waiting_server.address, "modelrec", "dynamic_batch")
    xs = [np.array([i + 0.25, 100.0 - i], np.float32) for i in range(4)]
    pending = [client.infer_async({"x": x}) for x in xs]
    for result, x in zip(_results(pending), xs):
        _check_model(result, [x], n=lambda _: 4, batch=4)


def test_dynamic_batch_model_runs_multi_instance_requests_together(waiting_server):
    client = Client(waiting_server.address, "modelrec", "dynamic_batch")
    requests = [[np.array([r, i], np.float32) for i in range(size)] for r, size in ((1, 3), (2, 1))]
    pending = [client.infer_async([{"x": x} for x in xs]) for xs in requests]
    for result, xs in zip(_results(pending), requests):
        _check_model(result, xs, n=lambda _: 4, batch=4)


def test_dynamic_batch_model_runs_at_most_max_batch_size_rows(waiting_server):
    """A request of 6 instances is taken alone (a job is never split by the pop) and the batch stage gets all 6,
    but the model runs at most max_batch_size=4 rows at a time: 4, then 2."""
    client = Client(waiting_server.address, "modelrec", "dynamic_batch")
    xs = [np.array([i, -0.5 * i], np.float32) for i in range(6)]
    result = client.infer_async([{"x": x} for x in xs]).result(RESULT_TIMEOUT_S)
    runs = iter([4, 4, 4, 4, 2, 2])
    _check_model(result, xs, n=lambda _: next(runs), batch=6)


def test_model_without_batch_dim_runs_each_instance_alone(waiting_server):
    """with_batch_dim=False: the instances of a batch (here from 4 requests) reach the model one at a time,
    each its whole [rows, 2] input (n is the instance's own row count, never the batch's)."""
    client = Client(waiting_server.address, "modelrec", "whole_instance")
    xs = [np.arange(rows * 2, dtype=np.float32).reshape(rows, 2) + 10 * k for k, rows in enumerate((2, 2, 3, 1))]
    pending = [client.infer_async({"x": x}) for x in xs]
    for result, x in zip(_results(pending), xs):
        _check_model(result, [x], n=lambda x: np.full(x.shape[0], x.shape[0], np.int64), batch=4)


def test_fixed_batch_model_pads_and_splits_single_requests(waiting_server):
    """Model batch size 2, max_batch_size 3: three requests run as [a, b] and [c, padding]; the padding row is
    discarded and every request gets its own row."""
    client = Client(waiting_server.address, "fixedrec", "fixed_batch")
    xs = [np.array([i + 1.5, -7.0 * (i + 1)], np.float32) for i in range(3)]
    pending = [client.infer_async({"x": x}) for x in xs]
    for result, x in zip(_results(pending), xs):
        _check_model(result, [x], n=lambda _: 2, batch=3)


def test_fixed_batch_model_splits_a_request_across_runs(waiting_server):
    """A request of 1 instance and one of 2 (3 instances, model batch size 2): one model run holds rows of both
    requests and the other ends with a padding row; order within each request is kept."""
    client = Client(waiting_server.address, "fixedrec", "fixed_batch")
    requests = [
        [np.array([0.5, 1.5], np.float32)],
        [np.array([2.0, -4.0], np.float32), np.array([-8.25, 16.0], np.float32)],
    ]
    pending = [client.infer_async([{"x": x} for x in xs]) for xs in requests]
    for result, xs in zip(_results(pending), requests):
        _check_model(result, xs, n=lambda _: 2, batch=3)


# ---------------------------------------------------------------------------------------------------- no delay


@pytest.fixture(scope="module")
def small_shm_server(batching_dir, tmp_path_factory):
    """recorder with the default batching (no delay: each batch is whatever is queued) and the smallest shared
    memory, 4 MB: about 2 MB per arena, so about 1 MB per job."""
    tmp = tmp_path_factory.mktemp("small_shm_server")
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp,
        f"""
        server.start_servables(server.ServableStartConfig({batching_dir!r}, "recorder", device_ids=0,
                                                          shm_size_mb=4))
        server.start_grpc_server({address!r})
    """,
        address,
    )
    yield server
    assert server.stop() == 0, server.output


def test_without_delay_nothing_waits_for_more(small_shm_server):
    client = Client(small_shm_server.address, "recorder", "record")
    for i in range(3):
        x = np.array([i, i * 0.5], np.float64)
        _check_record(client.infer_async({"x": x}).result(RESULT_TIMEOUT_S), [x], batch=1)
    xs = [np.array([i], np.uint8) for i in range(3)]
    _check_record(client.infer_async([{"x": x} for x in xs]).result(RESULT_TIMEOUT_S), xs, batch=3)


# ---------------------------------------------------------------------------------------------------- job size


def _job_limit(shm_size_mb: int) -> int:
    """The most request bytes one job may hold in a worker with ``shm_size_mb`` of shared memory: half the
    request arena, so that two jobs can be queued at once (mindserve._supervision.worker_process._split)."""
    from mindserve._transport.shm_channel import REQUESTS, ShmChannel

    channel = ShmChannel.create(shm_size_mb << 20, "the test")
    try:
        return channel.max_message(REQUESTS) // 2
    finally:
        channel.close_fd()
        channel.unmap()


def _instance_bytes(*arrays) -> int:
    """What _split counts for an instance: its data, 64 bytes of alignment per tensor, 256 of header."""
    return sum(a.nbytes + 64 for a in arrays) + 256


def test_request_larger_than_a_job_is_split_and_answered_in_order(small_shm_server):
    limit = _job_limit(4)
    rows = 100 * 1024  # 400 KB of float32 per instance: two fit in a job, three do not
    assert 2 * _instance_bytes(np.empty(rows, np.float32)) <= limit < 3 * _instance_bytes(np.empty(rows, np.float32))
    xs = [np.random.default_rng(i).standard_normal(rows).astype(np.float32) for i in range(8)]
    result = (
        Client(small_shm_server.address, "recorder", "record")
        .infer_async([{"x": x} for x in xs])
        .result(RESULT_TIMEOUT_S)
    )
    assert isinstance(result, list) and len(result) == 8, result
    for item, x in zip(result, xs):
        np.testing.assert_array_equal(item["y"], x)
        assert item["y"].dtype == np.float32
    # the request arena holds two such jobs at a time (a job's block is freed when its reply is read), so no
    # batch can have held more than 4 of the 8 instances: the request went as several jobs
    batches = [_scalar(item["batch"]) for item in result]
    assert max(batches) <= 4, batches
    assert len({_scalar(item["pid"]) for item in result}) == 1


def test_instance_larger_than_a_job_fails_alone(small_shm_server):
    limit = _job_limit(4)
    big = np.arange(limit // 4 + 1, dtype=np.float32)  # more data than a job can hold
    small: list[np.ndarray] = [np.array([1.0, 2.0], np.float32), np.array([3, 4, 5], np.int8)]
    expected = (
        f"instance 1 of {_instance_bytes(big)} bytes exceeds the worker's shared memory for requests "
        f"({limit} bytes per job); raise shm_size_mb in ServableStartConfig"
    )
    client = Client(small_shm_server.address, "recorder", "record")
    result = client.infer_async([{"x": small[0]}, {"x": big}, {"x": small[1]}]).result(RESULT_TIMEOUT_S)
    assert isinstance(result, list) and len(result) == 3, result
    assert result[1] == {"error": expected}
    for item, x in zip((result[0], result[2]), small):
        assert item["y"].dtype == x.dtype
        np.testing.assert_array_equal(item["y"], x)
    # alone in its request, the same instance fails the whole request with the same text
    assert client.infer_async({"x": big}).result(RESULT_TIMEOUT_S) == {
        "error": expected.replace("instance 1 ", "instance 0 ")
    }


# ---------------------------------------------------------------------------------------------------- shared memory


def _shm_names() -> set:
    return {name for name in os.listdir("/dev/shm") if name.startswith("mindserve-")}


def _lingering_shm(timeout: float = 10) -> set:
    """mindserve-* names in /dev/shm that stay. A segment's name exists only while it is being created (other
    servers on this machine may be starting), so a name seen now must be gone within ``timeout`` seconds."""
    seen = _shm_names()
    deadline = time.monotonic() + timeout
    while seen and time.monotonic() < deadline:
        time.sleep(0.05)
        seen &= _shm_names()
    return seen


def _shm_fds(pid: int) -> dict:
    """/proc/PID/fd/N -> link target, for the descriptors of ``pid`` on a mindserve shared-memory segment."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        try:
            target = os.readlink(path)
        except OSError:
            continue
        if target.startswith("/dev/shm/mindserve-"):
            found[path] = target
    return found


def test_shared_memory_has_no_name_and_owner_only_access(batching_dir, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp_path,
        f"""
        server.start_servables(server.ServableStartConfig({batching_dir!r}, "recorder", device_ids=0,
                                                          shm_size_mb=4))
        server.start_grpc_server({address!r})
    """,
        address,
    )
    try:
        x = np.array([1, 2, 3], np.int32)
        pid = _check_record(
            Client(address, "recorder", "record").infer_async({"x": x}).result(RESULT_TIMEOUT_S), [x], batch=1
        )
        assert pid in child_pids(server.proc.pid)
        assert _lingering_shm() == set()
        segments = _shm_fds(pid)
        assert len(segments) == 1, segments
        ((path, target),) = segments.items()
        assert re.fullmatch(r"/dev/shm/mindserve-[0-9a-f]{32} \(deleted\)", target), target  # random, unlinked
        info = os.stat(path)  # follows the link to the segment itself
        assert stat.S_ISREG(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.getuid()
        assert info.st_size == 4 << 20  # shm_size_mb
        assert _shm_fds(server.proc.pid) == {}  # the master keeps its mapping, not the descriptor
    finally:
        code = server.stop()
    assert code == 0, server.output
    assert _lingering_shm() == set()


# ---------------------------------------------------------------------------------------------------- bounded queue


def test_request_past_the_queue_bound_is_refused(batching_dir, tmp_path):
    """max_enqueued_requests=1: of two concurrent requests (the first waits up to 3 s for a second instance to
    fill its batch of 2), one is refused at once and the other gets its result."""
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp_path,
        f"""
        server.context.set_max_enqueued_requests(1)
        server.start_servables(server.ServableStartConfig({batching_dir!r}, "recorder", device_ids=0,
                                                          max_batch_size=2, max_batch_delay_ms=3000))
        server.start_grpc_server({address!r})
    """,
        address,
    )
    try:
        client = Client(address, "recorder", "record")
        xs = [np.array([1.5], np.float32), np.array([-2.5], np.float32)]
        results = _results([client.infer_async({"x": x}) for x in xs])
        refused = [r for r in results if isinstance(r, dict)]
        assert refused == [{"error": "Serving Error: enqueued requests count exceeds the limit 1"}], results
        [(result, x)] = [(r, x) for r, x in zip(results, xs) if isinstance(r, list)]
        _check_record(result, [x], batch=1)
        # an answered request leaves the queue: the next one is taken (2 instances fill the batch at once)
        more = [np.array([7.0], np.float32), np.array([8.0], np.float32)]
        _check_record(client.infer_async([{"x": x} for x in more]).result(RESULT_TIMEOUT_S), more, batch=2)
    finally:
        code = server.stop()
    assert code == 0, server.output


def test_queue_bound_counts_requests_until_answered(tmp_path):
    """max_enqueued_requests=2 with one request held in a stage (servables.BLOCK_CONFIG): of two more
    requests, whichever comes second is refused, the other waits behind the held one; once both are answered,
    requests are taken again."""
    folder = servables.make_blocker(str(tmp_path / "servables"))
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp_path,
        f"""
        server.context.set_max_enqueued_requests(2)
        server.start_servables(server.ServableStartConfig({str(tmp_path / "servables")!r}, "blocker", device_ids=0))
        server.start_grpc_server({address!r})
    """,
        address,
    )
    try:
        client = Client(address, "blocker", "hold")
        held = client.infer_async({"x": np.array([1], np.int64)})
        started = os.path.join(folder, "started-1")
        deadline = time.monotonic() + 20
        while not os.path.exists(started):
            assert time.monotonic() < deadline, "the held request did not reach its stage"
            time.sleep(0.02)
        pending = [client.infer_async({"x": np.array([0], np.int64)}) for _ in range(2)]
        answered: dict[int, object] = {}
        deadline = time.monotonic() + 20
        while not answered:  # nothing can be answered before the release but a refusal
            assert time.monotonic() < deadline, "neither request was refused"
            for k, p in enumerate(pending):
                try:
                    answered[k] = p.result(0.05)
                except grpc.FutureTimeoutError:
                    pass
        assert list(answered.values()) == [{"error": "Serving Error: enqueued requests count exceeds the limit 2"}]
        [waiting] = [p for k, p in enumerate(pending) if k not in answered]
        open(os.path.join(folder, "release-1"), "w").close()
        for p, x in ((held, 1), (waiting, 0)):
            result = p.result(RESULT_TIMEOUT_S)
            assert isinstance(result, list), result
            np.testing.assert_array_equal(result[0]["y"], np.array([x], np.int64))
        result = client.infer_async([{"x": np.array([0], np.int64)}] * 3).result(RESULT_TIMEOUT_S)
        assert isinstance(result, list) and len(result) == 3, result
    finally:
        open(os.path.join(folder, "release-1"), "w").close()
        code = server.stop()
    assert code == 0, server.output


@pytest.mark.parametrize(
    "value, message",
    [
        (0, "Parameter 'max_enqueued_requests' should be >= 1"),
        (-5, "Parameter 'max_enqueued_requests' should be >= 1"),
        ("a", "Parameter 'max_enqueued_requests' should be int, but actually <class 'str'>"),
        (True, "Parameter 'max_enqueued_requests' should be int, but actually <class 'bool'>"),
        (2.0, "Parameter 'max_enqueued_requests' should be int, but actually <class 'float'>"),
    ],
)
def test_set_max_enqueued_requests_checks_its_argument(value, message):
    from mindserve.server import context

    with pytest.raises(RuntimeError) as info:
        context.set_max_enqueued_requests(value)
    assert str(info.value) == message


# ---------------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_batch_size": -1}, "Parameter 'max_batch_size' should be in range [0,1048576]"),
        ({"max_batch_size": (1 << 20) + 1}, "Parameter 'max_batch_size' should be in range [0,1048576]"),
        ({"max_batch_size": "4"}, "Parameter 'max_batch_size' should be int, but actually <class 'str'>"),
        ({"max_batch_size": 4.0}, "Parameter 'max_batch_size' should be int, but actually <class 'float'>"),
        ({"max_batch_size": True}, "Parameter 'max_batch_size' should be int, but actually <class 'bool'>"),
        (
            {"max_batch_delay_ms": -1},
            "Parameter 'max_batch_delay_ms' should be a number in [0, 60000], but actually -1",
        ),
        (
            {"max_batch_delay_ms": 60000.5},
            "Parameter 'max_batch_delay_ms' should be a number in [0, 60000], but actually 60000.5",
        ),
        (
            {"max_batch_delay_ms": float("nan")},
            "Parameter 'max_batch_delay_ms' should be a number in [0, 60000], but actually nan",
        ),
        (
            {"max_batch_delay_ms": "10"},
            "Parameter 'max_batch_delay_ms' should be a number in [0, 60000], but actually '10'",
        ),
        (
            {"max_batch_delay_ms": True},
            "Parameter 'max_batch_delay_ms' should be a number in [0, 60000], but actually True",
        ),
        (
            {"max_batch_delay_ms": None},
            "Parameter 'max_batch_delay_ms' should be a number in [0, 60000], but actually None",
        ),
        ({"shm_size_mb": 3}, "Parameter 'shm_size_mb' should be in range [4,1048576]"),
        ({"shm_size_mb": 0}, "Parameter 'shm_size_mb' should be in range [4,1048576]"),
        ({"shm_size_mb": 64.0}, "Parameter 'shm_size_mb' should be int, but actually <class 'float'>"),
        ({"shm_size_mb": False}, "Parameter 'shm_size_mb' should be int, but actually <class 'bool'>"),
    ],
)
def test_batching_arguments_are_checked(kwargs, message):
    from mindserve.server import ServableStartConfig

    with pytest.raises(RuntimeError) as info:
        ServableStartConfig("servables", "add", **kwargs)
    assert str(info.value) == message


def test_batching_arguments_accepted():
    from mindserve.server import ServableStartConfig

    config = ServableStartConfig("servables", "add", max_batch_size=1 << 20, max_batch_delay_ms=60000, shm_size_mb=4)
    assert (config.max_batch_size, config.max_batch_delay_ms, config.shm_size_mb) == (1 << 20, 60000.0, 4)
    config = ServableStartConfig("servables", "add", max_batch_delay_ms=2.5)
    assert (config.max_batch_size, config.max_batch_delay_ms, config.shm_size_mb) == (0, 2.5, 64)
