"""What a storm of scrapes costs: the master's CPU per scrape of /metrics, and the requests/s of one client
(the bundled servables served as ``mindserve serve`` serves them, five workers; requests to ``add``, one
instance a request, 1 in flight, MSService Predict over a unix socket) with
and without scrapers hammering the metrics server meanwhile. Two servers are measured in turns in one run:

- ``current``: this checkout (scrapes reuse the workers' totals younger than a second);
- ``baseline``: ``--baseline-rev`` (default: the commit before the reuse), checked out in a temporary git
  worktree that borrows this checkout's built extension and protobuf modules.

    python benchmarks/scrape_storm.py [--seconds S] [--scrapers N] [--rate R] [--baseline-rev REV]

(the probe that found the cost scraped 460 times a second, the default ``--rate``; 0 scrapes back to back)

Prints, per server: master CPU ms per scrape (storm alone), scrapes/s reached, and the client's requests/s
without and with the storm.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np
from metrics_overhead import HERE, ROOT, baseline_tree

SERVER = '''
from mindserve import server
server.start_servables([server.ServableStartConfig({servables!r}, name, device_ids=0)
                        for name in ("add", "add_sub", "iris", "digits", "frames")])
server.start_grpc_server({grpc!r})
server.start_metrics_server({metrics!r})
print("listening", flush=True)
'''


def start(tree: str, grpc_address: str, metrics_address: str) -> subprocess.Popen:
    script = SERVER.format(servables=os.path.join(ROOT, "servables"), grpc=grpc_address, metrics=metrics_address)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": tree}, cwd=tree)
    assert process.stdout is not None and "listening" in process.stdout.readline()
    return process


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self._path)


def storm(path: str, scrapers: int, rate: float, stop: threading.Event) -> None:
    """Scrape from ``scrapers`` threads on kept connections, ``rate`` scrapes/s in all (0: back to back), until
    ``stop``; print the count."""
    counts = [0] * scrapers

    def scrape(k: int) -> None:
        connection = UnixConnection(path)
        interval = scrapers / rate if rate else 0.0
        due = time.monotonic()
        while not stop.is_set():
            connection.request("GET", "/metrics")
            connection.getresponse().read()
            counts[k] += 1
            due += interval
            time.sleep(max(0.0, due - time.monotonic()))
        connection.close()
    threads = [threading.Thread(target=scrape, args=(k,), daemon=True) for k in range(scrapers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(sum(counts), flush=True)


class Storm:
    """A storm in a process of its own (its threads would otherwise take the measuring client's GIL)."""

    def __init__(self, path: str, scrapers: int, rate: float):
        code = (f"import sys, threading; sys.path.insert(0, {HERE!r}); from scrape_storm import storm; "
                f"stop = threading.Event(); threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), "
                f"daemon=True).start(); storm({path!r}, {scrapers}, {rate}, stop)")
        self._process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True)

    def stop(self) -> int:
        """End it; the scrapes it made."""
        out, _ = self._process.communicate("", timeout=60)
        return int(out.strip() or 0)


async def requests_per_second(address: str, seconds: float) -> float:
    from mindserve._proto import ms_service_pb2 as pb

    request = pb.PredictRequest(servable_spec=pb.ServableSpec(name="add", method_name="add_common"))
    item = request.instances.add().items
    for name in ("x1", "x2"):
        item[name].dtype = pb.MS_FLOAT32
        item[name].shape.dims.extend([2, 2])
        item[name].data = np.ones((2, 2), np.float32).tobytes()
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/mindspore.serving.proto.MSService/Predict",
                                   request_serializer=pb.PredictRequest.SerializeToString,
                                   response_deserializer=pb.PredictReply.FromString)
        await call(request)
        done, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            await call(request, timeout=30)
            done += 1
    return done / seconds


def measure(name: str, process: subprocess.Popen, grpc_address: str, metrics_path: str, seconds: float,
            scrapers: int, rate: float) -> None:
    before, started = cpu_seconds(process.pid), time.monotonic()
    scraping = Storm(metrics_path, scrapers, rate)
    time.sleep(seconds)
    scrapes = scraping.stop()
    elapsed, used = time.monotonic() - started, cpu_seconds(process.pid) - before
    time.sleep(0.5)
    quiet = asyncio.run(requests_per_second(grpc_address, seconds))
    scraping = Storm(metrics_path, scrapers, rate)
    stormy = asyncio.run(requests_per_second(grpc_address, seconds))
    scraping.stop()
    print(f"{name:8} {1000 * used / max(scrapes, 1):6.2f} ms CPU/scrape  {scrapes / elapsed:7.0f} scrapes/s  "
          f"client {quiet:6.0f} req/s quiet, {stormy:6.0f} req/s in the storm ({stormy / quiet:.2f}x)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--scrapers", type=int, default=8)
    parser.add_argument("--rate", type=float, default=460.0, help="scrapes/s of all scrapers (0: back to back)")
    parser.add_argument("--baseline-rev", default="5da79f7", help="a commit from before the reuse")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="scrape_storm_")
    tree = baseline_tree(args.baseline_rev, tmp)
    processes = []
    try:
        for name, root in (("current", ROOT), ("baseline", tree)):
            grpc_address, metrics_path = f"unix:{tmp}/{name}.sock", f"{tmp}/{name}-metrics.sock"
            process = start(root, grpc_address, f"unix:{metrics_path}")
            processes.append(process)
            measure(name, process, grpc_address, metrics_path, args.seconds, args.scrapers, args.rate)
            process.terminate()
            process.wait()
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait()
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
