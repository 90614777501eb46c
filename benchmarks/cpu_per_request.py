"""CPU time each server process spends per request, under the load of ../shared/bench/loadgen.py.

    python benchmarks/cpu_per_request.py {mindserve,floor,null} [MODEL] [--batch B] [--concurrency C] [--seconds S]
                                         [--proto ms|v2]

- ``mindserve``: serve_bench_models.py on a unix socket; the master and its workers are counted apart; ``--proto``
  picks MSService Predict (default) or the Open Inference Protocol's ModelInfer.
- ``floor``: ../shared/bench/floor_server.py (one process: gRPC, protobuf and the model).
- ``null``: a grpc.aio server whose Predict answers a fixed, valid reply without looking at the request: the
  cost of gRPC alone, the least any Python master on grpc.aio can spend per request.

Throughput on this 2-core machine is bounded by the CPU all processes (the load generator included) spend per
request, so these figures say where a gap to the floor comes from. Run after benchmarks/run.sh has made the
bench venv and models (``~/.cache/mindserve-bench-*``). Prints the loadgen result and user/sys us per request.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from processes import children, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.environ.get("BENCH_DIR", os.path.join(HERE, "..", "..", "shared", "bench"))
CACHE = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
WORK = os.environ.get("BENCH_WORK", os.path.join(CACHE, "mindserve-bench-work"))
BENCH_PYTHON = os.path.join(os.environ.get("BENCH_VENV", os.path.join(CACHE, "mindserve-bench-venv")), "bin",
                            "python")

NULL_SERVER = '''
import asyncio, sys, grpc
from mindserve._proto import ms_service_pb2 as pb
reply = pb.PredictReply()
for _ in range(int(sys.argv[2])):
    t = reply.instances.add().items["y"]; t.dtype = 11; t.shape.dims.append(10); t.data = bytes(40)
REPLY = reply.SerializeToString()
async def predict(data, context): return REPLY
async def main(address):
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 512 << 20)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "mindspore.serving.proto.MSService", {"Predict": grpc.unary_unary_rpc_method_handler(predict)})])
    server.add_insecure_port(address)
    await server.start(); print("listening", flush=True); await server.wait_for_termination()
asyncio.run(main(sys.argv[1]))
'''


def _cpu(pid: int) -> tuple[float, float]:
    """User and system seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _start(kind: str, batch: int, mindserve_proto: str) -> tuple[subprocess.Popen, str, str]:
    """The server process, its address, and the protocol loadgen speaks to it."""
    if kind == "mindserve":
        address = f"unix:{WORK}/cpu_per_request.sock"
        argv = [sys.executable, os.path.join(HERE, "serve_bench_models.py"), WORK, address]
        proto = mindserve_proto
    elif kind == "floor":
        address = f"127.0.0.1:{free_port()}"
        argv = [BENCH_PYTHON, os.path.join(BENCH, "floor_server.py"), address, WORK]
        proto = "v2"
    else:
        address = f"unix:{WORK}/cpu_per_request_null.sock"
        argv = [sys.executable, "-c", NULL_SERVER, address, str(batch)]
        proto = "ms"
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in server.stdout:
        if "listening" in line:
            return server, address, proto
    raise RuntimeError(f"{kind} server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["mindserve", "floor", "null"])
    parser.add_argument("model", nargs="?", default="mlp")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--proto", choices=["ms", "v2"], default="ms", help="mindserve's protocol")
    args = parser.parse_args()
    server, address, proto = _start(args.kind, args.batch, args.proto)
    try:
        load = [BENCH_PYTHON, os.path.join(BENCH, "loadgen.py"), address, args.model, "--batch", str(args.batch),
                "--concurrency", str(args.concurrency), "--proto", proto]
        if proto == "ms":
            load += ["--name", args.model, "--method", "predict"]
        subprocess.run(load + ["--seconds", "2"], capture_output=True, check=True)  # warm up
        pids = {"server": [server.pid]}
        if args.kind == "mindserve":
            pids = {"master": [server.pid], "workers": children(server.pid)}
        before = {k: [_cpu(p) for p in v] for k, v in pids.items()}
        started = time.monotonic()
        out = subprocess.run(load + ["--seconds", str(args.seconds)], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        requests = result["rps"] * args.seconds
        print(json.dumps(result))
        for k, v in pids.items():
            after = [_cpu(p) for p in v]
            user = sum(a[0] - b[0] for a, b in zip(after, before[k]))
            system = sum(a[1] - b[1] for a, b in zip(after, before[k]))
            print(f"{k}: user {1e6 * user / requests:.0f} us/request, sys {1e6 * system / requests:.0f} us/request")
        print(f"({time.monotonic() - started:.1f} s)")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
