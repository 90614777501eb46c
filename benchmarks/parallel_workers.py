"""Throughput with num_parallel_workers=2 against 0 on one device: a servable whose Python pre-processing stage
does about 4 ms of CPU work (numpy) per instance before a model stage, 8 clients in flight, in turns, several
rounds, in one run against one server (each setting is a version of the same servable).

    python benchmarks/parallel_workers.py [--rounds R] [--seconds S] [--work-ms W] [--clients C]

Two methods, each measured with both settings:

- ``onnx``: pre (CPU work) then a real ONNX model stage (y = x + 1 on float32 [N, 2]);
- ``sleep``: pre then a Python stage that sleeps 2 ms per call without using the CPU, standing in for work
  that waits on an accelerator. In mindserve's design a Python stage runs on any process that runs Python stages
  (the Python-stage workers and the device worker), so this stage is not pinned to the device worker.

The load is one client process of 8 threads, each sending one-instance requests back to back on its own
connection (so 8 in flight) over gRPC on 127.0.0.1. Prints requests/s per method, setting and round, the sums
and the ratios.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from processes import children, free_port  # noqa: E402

CONFIG = '''
import os
import time

import numpy as np
from mindserve.server import register

model = register.declare_model(model_file="offset.onnx", model_format="ONNX", with_batch_dim=True)
ROUNDS = int(os.environ["BENCH_WORK_ROUNDS"])
_base = np.linspace(0.0, 1.0, 16384, dtype=np.float32)


def pre(x):
    a = _base + x[0]
    for _ in range(ROUNDS):  # CPU-bound pre-processing: about --work-ms of numpy per instance
        a = np.sqrt(a * a + 1.0) * 0.5
    return (x + a[:2] * 0).astype(np.float32)


def wait_device(x):
    time.sleep(0.002)  # waits without the CPU, as for an accelerator
    return x + 1


@register.register_method(output_names=["y"])
def onnx(x):
    return register.add_stage(model, register.add_stage(pre, x, outputs_count=1), outputs_count=1)


@register.register_method(output_names=["y"])
def sleep(x):
    return register.add_stage(wait_device, register.add_stage(pre, x, outputs_count=1), outputs_count=1)
'''

SERVER = '''
import os
os.environ["BENCH_WORK_ROUNDS"] = "{rounds}"
from mindserve import server
server.start_servables([
    server.ServableStartConfig({root!r}, "bench", 0, version_number=1, num_parallel_workers=0),
    server.ServableStartConfig({root!r}, "bench", 0, version_number=2, num_parallel_workers=2)])
server.start_grpc_server({address!r})
print("listening", flush=True)
'''


def _work_rounds(work_ms: float) -> int:
    """How many rounds of the pre stage's numpy loop take ``work_ms`` on this machine."""
    a = np.linspace(0.0, 1.0, 16384, dtype=np.float32)
    trials = []
    for _ in range(10):  # CPU time, and the least of several: what other processes do on the machine stays out
        began = time.thread_time()
        for _ in range(200):
            a = np.sqrt(a * a + 1.0) * 0.5
        trials.append((time.thread_time() - began) / 200)
    return max(1, round(work_ms / 1000 / min(trials)))


def _make_servable(root: str) -> None:
    from onnx import TensorProto, helper, numpy_helper, save

    os.makedirs(os.path.join(root, "bench"))
    with open(os.path.join(root, "bench", "servable_config.py"), "w") as f:
        f.write(textwrap.dedent(CONFIG))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    one = numpy_helper.from_array(np.array([1.0], np.float32), "one")
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "offset", [x], [y], initializer=[one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for version in ("1", "2"):
        os.makedirs(os.path.join(root, "bench", version))
        save(model, os.path.join(root, "bench", version, "offset.onnx"))


def _client(address: str, method: str, version: int, seconds: float, clients: int, done) -> None:
    """One load process: ``clients`` threads, each with its own connection, sending back to back."""
    import threading

    from mindserve.client import Client

    instance = {"x": np.array([1.0, 2.0], np.float32)}
    connections = [Client(address, "bench", method, version_number=version) for _ in range(clients)]
    for client in connections:
        client.infer(instance)  # connected before the clock starts
    counts = [[0, 0] for _ in connections]
    start = time.monotonic()

    def send(client, count: list) -> None:
        while time.monotonic() < start + seconds:
            result = client.infer(instance)
            count[1 if isinstance(result, dict) and "error" in result else 0] += 1

    threads = [threading.Thread(target=send, args=pair) for pair in zip(connections, counts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.put((sum(c[0] for c in counts), sum(c[1] for c in counts)))


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) that process ``pid`` used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _version_of(pid: int) -> int:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    return int(argv[argv.index(b"--version") + 1]) if b"--version" in argv else 0


def measure(address: str, method: str, version: int, seconds: float, clients: int, server: int) \
        -> tuple[float, float, float, float]:
    """Requests/s of ``clients`` callers (threads of one load process) sending back to back for ``seconds``,
    and the CPU milliseconds per request of the master, of the version's workers and of the load process."""
    workers = [pid for pid in children(server) if _version_of(pid) == version]
    before = [_cpu_s(pid) for pid in [server, *workers]]
    load_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done: multiprocessing.Queue = multiprocessing.Queue()
    proc = multiprocessing.Process(target=_client, args=(address, method, version, seconds, clients, done))
    proc.start()
    count, errors = done.get(timeout=seconds + 60)
    proc.join()
    if errors:
        raise RuntimeError(f"{errors} requests failed")
    load_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = [_cpu_s(pid) - b for pid, b in zip([server, *workers], before)]
    load = load_after.ru_utime + load_after.ru_stime - load_before.ru_utime - load_before.ru_stime
    per = 1000.0 / max(count, 1)  # (the CPU of connecting and of the first requests is in it too: a little high)
    return count / seconds, used[0] * per, sum(used[1:]) * per, load * per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--work-ms", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    rounds = _work_rounds(args.work_ms)
    with tempfile.TemporaryDirectory() as root:
        _make_servable(root)
        address = f"127.0.0.1:{free_port()}"
        script = os.path.join(root, "server.py")
        with open(script, "w") as f:
            f.write(SERVER.format(rounds=rounds, root=root, address=address))
        server = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and "listening" in server.stdout.readline()
            print(f"pre stage: {rounds} numpy rounds (about {args.work_ms} ms per instance); {args.clients} "
                  f"clients; {args.seconds} s per measurement", flush=True)
            rates: dict[tuple[str, int], list[float]] = {}
            for round_ in range(args.rounds):
                for method in ("onnx", "sleep"):
                    for workers, version in ((0, 1), (2, 2)):
                        rate, master, used, load = measure(address, method, version, args.seconds, args.clients,
                                                           server.pid)
                        rates.setdefault((method, workers), []).append(rate)
                        print(f"round {round_ + 1} {method:5} num_parallel_workers={workers}: {rate:7.1f} "
                              f"requests/s; CPU ms per request: master {master:.2f}, workers {used:.2f}, load "
                              f"{load:.2f}", flush=True)
            for method in ("onnx", "sleep"):
                zero, two = rates[(method, 0)], rates[(method, 2)]
                # each round's two measurements ran back to back: their ratio is the least disturbed figure
                ratios = sorted(b / a for a, b in zip(zero, two))
                print(f"{method:5}: num_parallel_workers=0 {sum(zero) / len(zero):7.1f}/s, =2 "
                      f"{sum(two) / len(two):7.1f}/s, ratio of the means {sum(two) / sum(zero):.2f}, median of the "
                      f"rounds' ratios {ratios[len(ratios) // 2]:.2f}")
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
