"""Round trips per second of a 64 MiB float32 tensor (a method that returns its input plus one), sent inline vs
through the client's system shared memory (input and output in registered regions), over a unix socket and over
TCP loopback, with tritonclient.grpc, in turns, several rounds, in one run against one server.

    python benchmarks/shared_memory.py [--rounds R] [--seconds S] [--mib M]

Prints round trips/s per mode per round, the sums, and shared memory's ratio to inline on each transport.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np

CONFIG = '''
from mindserve.server import register


def plus_one(x):
    return x + 1


@register.register_method(output_names=["y"])
def add_one(x):
    return register.add_stage(plus_one, x, outputs_count=1)
'''
SERVER = '''
from mindserve import server
server.start_servables(server.ServableStartConfig({root!r}, "big_echo", device_ids=0, shm_size_mb=600))
server.start_grpc_server({unix!r}, max_msg_mb_size=512, allow_client_shm=True)
server.start_grpc_server({tcp!r}, max_msg_mb_size=512, allow_client_shm=True)
print("listening", flush=True)
'''


def round_trips(address: str, x: np.ndarray, seconds: float, shared: bool) -> float:
    import tritonclient.grpc as triton
    import tritonclient.utils.shared_memory as shm

    client = triton.InferenceServerClient(address)
    handles = []
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    output = triton.InferRequestedOutput("y")
    if shared:
        tag = uuid.uuid4().hex
        for name in ("in", "out"):
            key = f"/bench-{name}-{tag}"
            handles.append(shm.create_shared_memory_region(f"{name}-{tag}", key, x.nbytes))
            client.register_system_shared_memory(f"{name}-{tag}", key, x.nbytes)
        shm.set_shared_memory_region(handles[0], [x])
        tensor.set_shared_memory(f"in-{tag}", x.nbytes)
        output.set_shared_memory(f"out-{tag}", x.nbytes)
    else:
        tensor.set_data_from_numpy(x)
    try:
        done = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            result = client.infer("big_echo", [tensor], outputs=[output])
            if shared:
                y = shm.get_contents_as_numpy(handles[1], np.float32, list(x.shape))
            else:
                y = result.as_numpy("y")
            assert y[0, 0] == x[0, 0] + 1
            done += 1
        return done / (time.monotonic() - started)
    finally:
        if shared:
            client.unregister_system_shared_memory(f"in-{tag}")
            client.unregister_system_shared_memory(f"out-{tag}")
            for handle in handles:
                shm.destroy_shared_memory_region(handle)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="shm_bench_")
    os.makedirs(os.path.join(tmp, "big_echo"))
    with open(os.path.join(tmp, "big_echo", "servable_config.py"), "w") as f:
        f.write(CONFIG)
    unix, tcp = f"unix:{tmp}/grpc.sock", "127.0.0.1:18931"
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(root=tmp, unix=unix, tcp=tcp)],
                              stdout=subprocess.PIPE, text=True)
    x = np.random.default_rng(0).random((1, args.mib << 18), dtype=np.float32)  # 1 x (M MiB / 4 bytes)
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        modes = [(t, a, s) for t, a in (("unix", unix), ("tcp", tcp)) for s in (False, True)]
        sums = {m: 0.0 for m in modes}
        for round_ in range(args.rounds):
            for mode in (modes if round_ % 2 == 0 else list(reversed(modes))):
                rate = round_trips(mode[1], x, args.seconds, mode[2])
                sums[mode] += rate
                print(f"round {round_ + 1} {mode[0]:4} {'shared' if mode[2] else 'inline':6} {rate:7.2f} round "
                      f"trips/s", flush=True)
        for transport in ("unix", "tcp"):
            inline = next(v for m, v in sums.items() if m[0] == transport and not m[2])
            shared = next(v for m, v in sums.items() if m[0] == transport and m[2])
            print(f"{transport}: inline {inline / args.rounds:.2f}/s, shared memory {shared / args.rounds:.2f}/s, "
                  f"ratio {shared / inline:.2f}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
