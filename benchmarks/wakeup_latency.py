"""What one cross-process wake-up costs on this machine: the floor under mindserve's latency for one request in
flight. Two processes hand a token back and forth through eventfds, each blocking in read() until the other
writes (as the worker sleeps until the master queues a job and the master's loop sleeps until the worker's
eventfd fires); with ``--spin US`` each side first polls for up to US microseconds before it blocks (a bounded
spin, what the design could do before its futex sleep).

    python benchmarks/wakeup_latency.py [--rounds N] [--spin US]

Prints the median and p99 of one round trip (two wake-ups) and the CPU the two processes spent per round trip.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time


def _wait(fd: int, spin_s: float) -> None:
    if spin_s > 0:
        deadline = time.perf_counter() + spin_s
        while time.perf_counter() < deadline:
            try:
                os.eventfd_read(fd)
                return
            except BlockingIOError:
                pass
    os.set_blocking(fd, True)
    os.eventfd_read(fd)
    os.set_blocking(fd, False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--spin", type=float, default=0.0, help="microseconds to poll before blocking")
    args = parser.parse_args()
    spin_s = args.spin / 1e6
    ping, pong = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    child = os.fork()
    if child == 0:
        for _ in range(args.rounds + 100):
            _wait(ping, spin_s)
            os.eventfd_write(pong, 1)
        os._exit(0)
    samples = []
    cpu_before = os.times()
    for i in range(args.rounds + 100):
        started = time.perf_counter()
        os.eventfd_write(ping, 1)
        _wait(pong, spin_s)
        if i >= 100:  # (the first rounds warm up)
            samples.append(time.perf_counter() - started)
    os.waitpid(child, 0)
    cpu_after = os.times()
    cpu = (cpu_after.user - cpu_before.user + cpu_after.system - cpu_before.system
           + cpu_after.children_user - cpu_before.children_user
           + cpu_after.children_system - cpu_before.children_system)
    samples.sort()
    print(f"spin {args.spin:g} us: round trip median {statistics.median(samples) * 1e6:.1f} us, "
          f"p99 {samples[int(len(samples) * 0.99)] * 1e6:.1f} us, CPU {cpu / len(samples) * 1e6:.1f} us per round "
          f"trip")


if __name__ == "__main__":
    main()
