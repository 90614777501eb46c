"""The master's and the worker's resident memory after large requests: does it come back?

    .venv/bin/python benchmarks/memory_after_large_requests.py [--requests N] [--settle S]

Serves an echo servable (one Python stage, y = x) on a loopback port and prints VmRSS (and its anonymous part)
of the master and of the worker at start, after each of N requests of one 16 MB float32 tensor, and after two
requests of 10000 one-number instances (the most instances a request may carry), each read S seconds after the
answer (the master gives memory back a second after a large request).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from mindserve.client import Client  # noqa: E402
from processes import children, free_port, rss  # noqa: E402

ECHO = '''
from mindserve.server import register

def identity(x):
    return x

@register.register_method(output_names=["y"])
def echo(x):
    return register.add_stage(identity, x, outputs_count=1)
'''

SERVER = """
from mindserve import server
server.start_servables(server.ServableStartConfig({root!r}, "echo", device_ids=0, shm_size_mb=128))
server.start_grpc_server({address!r}, max_msg_mb_size=512)
print("READY", flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--settle", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "echo", "1"))
        with open(os.path.join(root, "echo", "servable_config.py"), "w") as f:
            f.write(ECHO)
        address = f"127.0.0.1:{free_port()}"
        proc = subprocess.Popen([sys.executable, "-c", SERVER.format(root=root, address=address)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
            (worker,) = children(proc.pid)
            client = Client(address, "echo", "echo")

            def report(what: str) -> None:
                print(f"{what:<28} master {rss(proc.pid):<24} worker {rss(worker)}")

            report("at start")
            x = np.ones(4 << 20, np.float32)
            for k in range(args.requests):
                result = client.infer({"x": x})
                assert isinstance(result, list) and result[0]["y"].nbytes == x.nbytes, result
                time.sleep(args.settle)
                report(f"after 16 MB request {k + 1}")
            for k in range(2):
                result = client.infer([{"x": np.float32(i)} for i in range(10000)])
                assert isinstance(result, list) and len(result) == 10000
                time.sleep(args.settle)
                report(f"after 10000 instances {k + 1}")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
