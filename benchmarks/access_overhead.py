"""What access control costs a request: the mlp model, 32 instances a request, 4 in flight (ModelInfer over
gRPC on unix sockets), against one server with three listeners: no access, a restricted key, and a JWT (HS256,
remembered once verified). The listeners are measured in turns, several rounds, in one run.

    python benchmarks/access_overhead.py [--rounds R] [--seconds S]

Run after benchmarks/run.sh has made the bench models (``~/.cache/mindserve-bench-work``). Prints instances/s of
each listener per round, their sums, and each guarded listener's ratio to the open one.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time

import grpc
import jwt
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
WORK = os.environ.get("BENCH_WORK", os.path.join(CACHE, "mindserve-bench-work"))
SECRET = "a benchmark HMAC secret of more than 32 bytes"
SERVER = '''
import sys
sys.path.insert(0, {here!r})
from serve_bench_models import write_servables
from mindserve import server
root = write_servables({work!r})
server.start_servables(server.ServableStartConfig(root, "mlp", device_ids=0))
server.start_grpc_server({open!r})
server.start_grpc_server({key!r}, access=server.AccessConfig(restricted={{"inference": ("infer-key", "s3cret")}}))
server.start_grpc_server({jwt!r}, access=server.AccessConfig(jwt=server.JWTConfig(secret={secret!r})))
print("listening", flush=True)
'''


async def load(address: str, metadata: tuple, seconds: float, batch: int = 32, concurrency: int = 4) -> float:
    """Instances per second of a closed loop of ``concurrency`` callers."""
    from mindserve._proto import grpc_inference as oip

    request = oip.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[batch, 784])
    request.raw_input_contents.append(np.random.default_rng(0).random((batch, 784), dtype=np.float32).tobytes())
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=oip.ModelInferRequest.SerializeToString,
                                   response_deserializer=oip.ModelInferResponse.FromString)
        await call(request, metadata=metadata)  # warm
        done = 0
        deadline = time.monotonic() + seconds

        async def caller() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                await call(request, metadata=metadata, timeout=30)
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return done * batch / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="access_bench_")
    addresses = {name: f"unix:{tmp}/{name}.sock" for name in ("open", "key", "jwt")}
    script = SERVER.format(here=HERE, work=WORK, secret=SECRET, **addresses)
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        token = jwt.encode({"scope": "inference", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
        metadata = {"open": (), "key": (("infer-key", "s3cret"),), "jwt": (("authorization", f"Bearer {token}"),)}
        sums = dict.fromkeys(addresses, 0.0)
        for round_ in range(args.rounds):
            order = list(addresses) if round_ % 2 == 0 else list(reversed(addresses))
            for name in order:
                ips = asyncio.run(load(addresses[name], metadata[name], args.seconds))
                sums[name] += ips
                print(f"round {round_ + 1} {name:5} {ips:10.0f} instances/s", flush=True)
        for name in addresses:
            print(f"sum {name:5} {sums[name]:10.0f}   ratio to open {sums[name] / sums['open']:.3f}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
