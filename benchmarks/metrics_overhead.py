"""What metrics cost a request: the mlp model, 32 instances a request, 4 in flight (ModelInfer over gRPC on a
unix socket), against two servers measured in turns, several rounds, in one run:

- ``metrics``: this checkout, with its metrics server scraped once a second meanwhile (as Prometheus would,
  at a shorter interval than its default), so that the count of every request and the workers' reports are
  paid for;
- ``baseline``: the same server at a commit from before metrics (``--baseline-rev``), checked out in a
  temporary git worktree that borrows this checkout's built extension and protobuf modules.

    python benchmarks/metrics_overhead.py [--rounds R] [--seconds S] [--baseline-rev REV]

Run after benchmarks/run.sh has made the bench models (``~/.cache/mindserve-bench-work``). Prints instances/s of
each server per round, their sums, and the ratio of the metrics server to the baseline.
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import threading

from access_overhead import HERE, WORK, load

ROOT = os.path.dirname(HERE)
SERVER = '''
import sys
sys.path.insert(0, {here!r})
from serve_bench_models import write_servables
from mindserve import server
root = write_servables({work!r})
server.start_servables(server.ServableStartConfig(root, "mlp", device_ids=0))
server.start_grpc_server({address!r})
{metrics}
print("listening", flush=True)
'''
BUILT = ("mindserve/_native*.so", "mindserve/_proto/*_pb2.py", "mindserve/_proto/*.desc")


def baseline_tree(rev: str, tmp: str) -> str:
    """A worktree of ``rev`` with this checkout's build outputs (the C core is unchanged by metrics)."""
    path = os.path.join(tmp, "baseline")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, rev], check=True, capture_output=True)
    for pattern in BUILT:
        for built in glob.glob(os.path.join(ROOT, pattern)):
            shutil.copy(built, os.path.join(path, os.path.relpath(built, ROOT)))
    return path


def start(script: str, pythonpath: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    assert server.stdout is not None and "listening" in server.stdout.readline()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--baseline-rev", default="1d57af3", help="a commit from before metrics")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="metrics_bench_")
    tree = baseline_tree(args.baseline_rev, tmp)
    addresses = {"metrics": f"unix:{tmp}/metrics.sock", "baseline": f"unix:{tmp}/baseline.sock"}
    metrics_address = f"unix:{tmp}/scrape.sock"
    servers = []
    stop_scraping = threading.Event()
    try:
        servers.append(start(SERVER.format(here=HERE, work=WORK, address=addresses["metrics"],
                                           metrics=f"server.start_metrics_server({metrics_address!r})"), ROOT))
        servers.append(start(SERVER.format(here=HERE, work=WORK, address=addresses["baseline"], metrics=""), tree))
        scraper = threading.Thread(target=scrape_every_second, args=(metrics_address[len("unix:"):], stop_scraping),
                                   daemon=True)
        scraper.start()
        sums = dict.fromkeys(addresses, 0.0)
        for round_ in range(args.rounds):
            order = list(addresses) if round_ % 2 == 0 else list(reversed(addresses))
            for name in order:
                ips = asyncio.run(load(addresses[name], (), args.seconds))
                sums[name] += ips
                print(f"round {round_ + 1} {name:8} {ips:10.0f} instances/s", flush=True)
        for name in addresses:
            print(f"sum {name:8} {sums[name]:10.0f}   ratio to baseline {sums[name] / sums['baseline']:.3f}")
    finally:
        stop_scraping.set()
        for server in servers:
            server.terminate()
            server.wait()
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def scrape_every_second(socket_path: str, stop: threading.Event) -> None:
    import http.client
    import socket

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(socket_path)

    while not stop.wait(1.0):
        connection = UnixConnection("localhost", timeout=10)
        connection.request("GET", "/metrics")
        connection.getresponse().read()
        connection.close()


if __name__ == "__main__":
    main()
