"""num_parallel_workers with MindSpore Serving's meaning: the processes that run a servable version's Python stages,
the device workers included; the ones past the device workers run Python stages only (no model loaded), and a
method of both kinds of stage runs as segments over them (mindserve._supervision.segments).

The servable (PARALLEL_CONFIG of support/servables.py) has Python stages around a model stage; its pre stage
records its pid and start/end times into files, and waits for a release file or for other stages to start.
"""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mindserve.client import Client
from support import servables
from support.metrics import scrape_fresh, value
from support.processes import ServerProcess, free_addresses, pid_alive, start_server, wait_until, worker_pids

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

RESULT_TIMEOUT_S = 30
NOT_LOADED = (
    "Model(offset.onnx).call() failed: the model is not loaded in this process, which runs Python stages "
    "only (num_parallel_workers is above the number of device ids); a model runs as a stage of its own "
    "(add_stage), or set num_parallel_workers to at most the number of device ids to call it from a "
    "Python stage"
)


class Parallel:
    """A server of the parallel servable: version 1 started with ``num_parallel_workers`` (and version 2 with
    ``second`` when given), on device 0; a metrics server beside it."""

    def __init__(self, tmp_path, num_parallel_workers: int, second=None, rendezvous: int = 2):
        root = str(tmp_path / "servables")
        servables.make_parallel(root, versions=(1, 2) if second is not None else (1,))
        self.stages = tmp_path / "stages"
        self.stages.mkdir()
        self.address, self.metrics = free_addresses(2)
        configs = (
            f"server.ServableStartConfig({root!r}, 'parallel', 0, version_number=1, "
            f"num_parallel_workers={num_parallel_workers})"
        )
        if second is not None:
            configs += (
                f", server.ServableStartConfig({root!r}, 'parallel', 0, version_number=2, "
                f"num_parallel_workers={second})"
            )
        self.server = start_server(
            tmp_path,
            textwrap.dedent(f"""
            import os
            os.environ["MINDSERVE_TEST_STAGE_DIR"] = {str(self.stages)!r}
            os.environ["MINDSERVE_TEST_RENDEZVOUS"] = "{rendezvous}"
            server.start_servables([{configs}])
            server.start_grpc_server({self.address!r})
            server.start_metrics_server({self.metrics!r})
        """),
            self.address,
        )

    def client(self, method: str, version: int = 1) -> Client:
        return Client(self.address, "parallel", method, version_number=version)

    def send(self, method: str, *rows, version: int = 1):
        return self.client(method, version).infer_async([{"x": np.array(row, np.int64)} for row in rows])

    def stage(self, key: int, ended: bool = True, timeout: float = 20):
        """(pid, start, end) that the pre stage of x[0] = key recorded (end None until it ended)."""
        path = self.stages / f"stage-{key}"
        wait_until(
            lambda: path.exists() and len(path.read_text().split()) >= (3 if ended else 2),
            f"the stage of key {key}",
            timeout,
        )
        fields = path.read_text().split()
        return int(fields[0]), float(fields[1]), float(fields[2]) if len(fields) > 2 else None

    def release(self, key: int) -> None:
        (self.stages / f"release-{key}").touch()

    def python_only_pids(self) -> list:
        return [pid for pid in worker_pids(self.server, "parallel") if _python_only(pid)]

    def close(self) -> int:
        for key in range(1, 10):
            self.release(key)
        return self.server.stop(signal.SIGTERM)


def _python_only(pid: int) -> bool:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    return b"--python-only" in argv and argv[argv.index(b"--python-only") + 1] == b"1"


def _onnxruntime_mapped(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return "onnxruntime" in f.read()


def _plain(results):
    """Results with arrays as (dtype, shape, values), comparable with ==."""
    if isinstance(results, dict):
        return {k: (v.dtype.str, v.shape, v.tolist()) if isinstance(v, np.ndarray) else v for k, v in results.items()}
    return [_plain(r) for r in results]


def test_python_stages_of_concurrent_requests_run_in_different_processes_at_the_same_time(tmp_path):
    # 3 processes run Python stages: the device worker and 2 Python-stage workers; each of the 3 concurrent
    # requests' pre stage waits until all 3 have started, which only happens when they run at the same time
    parallel = Parallel(tmp_path, num_parallel_workers=3, rendezvous=3)
    try:
        workers = worker_pids(parallel.server, "parallel")
        python_only = parallel.python_only_pids()
        assert len(workers) == 3 and len(python_only) == 2, workers
        [device] = [pid for pid in workers if pid not in python_only]
        pending = [parallel.send("pipeline", [key, -1]) for key in (1, 2, 3)]
        results = [p.result(RESULT_TIMEOUT_S) for p in pending]
        stages = [parallel.stage(key) for key in (1, 2, 3)]
        assert sorted(pid for pid, _, _ in stages) == sorted(workers)
        assert max(start for _, start, _ in stages) < min(end for _, _, end in stages)  # they overlapped
        for key, result in zip((1, 2, 3), results):
            [answer] = result
            # y = (x + 1) * 2 (offset.onnx, then post); the model stage ran on the device worker, where the model is
            np.testing.assert_array_equal(answer["y"], np.array([(key + 1) * 2, 0], np.float32))
            pre_pid = int(answer["pre_pid"][0])
            assert answer["pre_loaded"].tolist() == [pre_pid == device], (answer, device)
        # the model is loaded once, in the device worker: no Python-stage worker has ONNX Runtime mapped
        assert [pid for pid in workers if _onnxruntime_mapped(pid)] == [device]
        samples = scrape_fresh(parallel.metrics)
        for label in ("0", "python-1", "python-2"):
            assert value(samples, "mindserve_worker_up", servable="parallel", version="1", device=label) == 1
            assert (
                value(samples, "mindserve_worker_restarts_total", servable="parallel", version="1", device=label) == 0
            )
        # each method execution counted once over the segments: 3 requests of one instance
        assert (
            value(samples, "mindserve_inference_count_total", servable="parallel", version="1", method="pipeline") == 3
        )
    finally:
        code = parallel.close()
    assert code == 0, parallel.server.output
    wait_until(lambda: not any(pid_alive(pid) for pid in workers), "the workers' exit at the stop", 10)


def test_results_and_errors_are_those_of_num_parallel_workers_0(tmp_path):
    # version 1 runs every method whole in its device worker; version 2 the same servable over 2 processes
    parallel = Parallel(tmp_path, num_parallel_workers=0, second=2)
    try:
        rows = [[1, 2], [-1, 2], [60, 2], [3, 4], [-2, 0]]
        serial = parallel.send("steps", *rows, version=1).result(RESULT_TIMEOUT_S)
        segmented = parallel.send("steps", *rows, version=2).result(RESULT_TIMEOUT_S)
        assert _plain(segmented) == _plain(serial)
        assert _plain(serial) == [
            {"y": ("<f4", (2,), [1.0, 2.0]), "text": "seen 2", "raw": b"raw", "x": ("<i8", (2,), [1, 2])},
            {
                "error": "Call Function 'parallel.check' Failed, method: 'steps', stage index(begin with 1): 1, error "
                "msg: negative key -1"
            },
            {
                "error": "Call Function 'parallel.last' Failed, method: 'steps', stage index(begin with 1): 4, error "
                "msg: too large 61.0"
            },
            {"y": ("<f4", (2,), [3.0, 4.0]), "text": "seen 4", "raw": b"raw", "x": ("<i8", (2,), [3, 4])},
            {
                "error": "Call Function 'parallel.check' Failed, method: 'steps', stage index(begin with 1): 1, error "
                "msg: negative key -2"
            },
        ]
        # one request's instances all alike (stacked between the processes) give the same results too
        alike = [[k, 1] for k in range(8)]
        assert _plain(parallel.send("steps", *alike, version=2).result(RESULT_TIMEOUT_S)) == _plain(
            parallel.send("steps", *alike, version=1).result(RESULT_TIMEOUT_S)
        )
        # float32 instances stay stacked between the processes (model stages over the method input)
        floats = [{"x": np.array([k, -k], np.float32)} for k in range(3)]
        for method in ("model_after", "model_then_post"):
            assert _plain(parallel.client(method, 2).infer(floats)) == _plain(parallel.client(method, 1).infer(floats))
        assert _plain(parallel.client("model_then_post", 2).infer(floats)) == [
            {"y": ("<f4", (2,), [(k + 1) * 2.0, (1 - k) * 2.0]), "model_y": ("<f4", (2,), [k + 1.0, 1.0 - k])}
            for k in range(3)
        ]
        # a value that cannot go to another process fails its instance alone
        crossing = parallel.send("steps", [99, 0], [5, 0], version=2).result(RESULT_TIMEOUT_S)
        assert _plain(crossing) == [
            {
                "error": "Method 'steps' stage 1 output 0 cannot go to another worker process (num_parallel_workers): "
                "unsupported type <class 'dict'>, a value handed on between processes must be a numpy array, "
                "str, bytes or a scalar"
            },
            {"y": ("<f4", (2,), [5.0, 0.0]), "text": "seen 6", "raw": b"raw", "x": ("<i8", (2,), [5, 0])},
        ]
        # (in one process the value reaches the model, which refuses it for that instance alone)
        assert _plain(parallel.send("steps", [99, 0], [5, 0], version=1).result(RESULT_TIMEOUT_S)) == [
            {
                "error": "Given model input 0 data type dict not match the data type kMSI_Float32 defined in model: "
                "input 'x' of model offset.onnx takes float32 [2], given dict"
            },
            _plain(crossing)[1],
        ]
        # a method of Python stages only runs on any process that runs Python stages: the Python-stage worker
        # and the device worker take turns while idle; Model.call in the Python-stage worker fails, with a text
        # that says why
        by_call = [parallel.send("by_call", [1, 2], version=2).result(RESULT_TIMEOUT_S) for _ in range(2)]
        assert sorted(map(str, _plain(by_call))) == sorted(
            map(
                str,
                [
                    [{"y": ("<f4", (2,), [2.0, 3.0])}],
                    {
                        "error": f"Call Function 'parallel.call_model' Failed, method: 'by_call', stage index(begin "
                        "with 1): 1, "
                        f"error msg: {NOT_LOADED}"
                    },
                ],
            )
        )
    finally:
        code = parallel.close()
    assert code == 0, parallel.server.output


def test_a_killed_python_stage_worker_fails_only_its_instances_and_is_replaced(tmp_path):
    parallel = Parallel(tmp_path, num_parallel_workers=2)
    try:
        [old] = parallel.python_only_pids()
        first, second = parallel.send("pipeline", [1, 0]), parallel.send("pipeline", [2, 0])
        held = {parallel.stage(key, ended=False)[0]: key for key in (1, 2)}
        assert old in held and len(held) == 2, held  # one in each process that runs Python stages
        os.kill(old, signal.SIGKILL)
        lost, kept = (first, second) if held[old] == 1 else (second, first)
        assert lost.result(RESULT_TIMEOUT_S) == {
            "error": "worker of servable parallel version 1 in Python-stage process 1 exited unexpectedly (exit code "
            "-9), the request was not completed"
        }
        parallel.release(3 - held[old])
        [answer] = kept.result(RESULT_TIMEOUT_S)
        np.testing.assert_array_equal(answer["y"], np.array([(3 - held[old] + 1) * 2, 2], np.float32))
        wait_until(
            lambda: len(parallel.python_only_pids()) == 1 and parallel.python_only_pids() != [old],
            "a new Python-stage worker",
        )
        [new] = parallel.python_only_pids()
        pids = []

        def answered_by_new() -> bool:  # later requests work, and run on the new process too once it is up
            [answer] = parallel.send("pipeline", [0, 1]).result(RESULT_TIMEOUT_S)
            np.testing.assert_array_equal(answer["y"], np.array([2, 4], np.float32))
            pids.append(int(answer["pre_pid"][0]))
            return pids[-1] == new

        wait_until(answered_by_new, "a request answered by the new Python-stage worker", 30)
        assert old not in pids
        samples = scrape_fresh(parallel.metrics)
        assert (
            value(samples, "mindserve_worker_restarts_total", servable="parallel", version="1", device="python-1") == 1
        )
        assert value(samples, "mindserve_worker_restarts_total", servable="parallel", version="1", device="0") == 0
        assert value(samples, "mindserve_worker_up", servable="parallel", version="1", device="python-1") == 1
    finally:
        code = parallel.close()
    assert code == 0, parallel.server.output


@pytest.mark.parametrize(
    "setting, text",
    [
        ("65", "expected an int in [0, 64], got 65"),
        ("-1", "expected an int in [0, 64], got -1"),
        ("many", "expected an int in [0, 64], got 'many'"),
    ],
)
def test_num_parallel_workers_out_of_range_exits_2_naming_it(tmp_path, setting, text):
    servables.make_parallel(str(tmp_path / "servables"))
    (tmp_path / "serving.yaml").write_text(f"servables:\n  - name: parallel\n    num_parallel_workers: {setting}\n")
    done = subprocess.run(
        [sys.executable, "-m", "mindserve", "serve", "--config", "serving.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"mindserve serve: error: serving.yaml: servables[0].num_parallel_workers: {text}\n"


def test_the_python_api_refuses_num_parallel_workers_out_of_range():
    from mindserve import server

    with pytest.raises(RuntimeError) as raised:
        server.ServableStartConfig("servables", "parallel", num_parallel_workers=65)
    assert str(raised.value) == "Parameter 'num_parallel_workers' should be in range [0,64]"


def test_serve_prints_the_python_stage_workers_it_started(tmp_path):
    servables.make_parallel(str(tmp_path / "servables"))
    (tmp_path / "stages").mkdir()
    grpc_address, rest_address = free_addresses(2)
    (tmp_path / "serving.yaml").write_text(
        textwrap.dedent(f"""\
        servables:
          - name: parallel
            num_parallel_workers: 3
        grpc_address: {grpc_address}
        rest_address: {rest_address}
        metrics: null
    """)
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "mindserve", "serve", "--config", "serving.yaml"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=str(tmp_path),
        env={**os.environ, "MINDSERVE_TEST_STAGE_DIR": str(tmp_path / "stages")},
    )
    server = ServerProcess(proc, grpc_address)
    try:
        server.read_until("ready; Ctrl-C or SIGTERM stops it\n", 60)
        python_only = sorted(pid for pid in worker_pids(server, "parallel") if _python_only(pid))
        assert len(python_only) == 2
        line = server.output.splitlines()[1]
        start = "servable parallel version 1: 2 Python-stage worker processes (pid "
        assert line.startswith(start) and line.endswith(") beside the device worker"), line
        assert (
            sorted(int(pid) for pid in line[len(start) : -len(") beside the device worker")].split(", ")) == python_only
        )
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 0, server.output
