"""Processes of the tests: free ports, the children of a process, server scripts run in their own process
(``start_server``, ``ServerProcess``), their worker processes, and bounded waits."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from support.certs import PemFiles


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_addresses(count: int) -> list[str]:
    """``count`` different free 127.0.0.1 addresses (each port held until all are chosen, so none repeats)."""
    held = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [f"127.0.0.1:{s.getsockname()[1]}" for s in held]
    finally:
        for s in held:
            s.close()


def child_pids(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class ServerProcess:
    """A server script running in its own process; ``output`` is what it printed."""

    # What a test module's fixture records on its server for the tests that use it (only some of them, each set
    # by the fixture that knows it): its other listening addresses, files the servables watch, and folders.
    rest: str
    open_address: str
    guarded: str
    metrics: str
    closed: str
    closed_rest: str
    small: str
    unix_address: str
    unix_path: str
    addresses: dict[str, str]
    workers: list[int]
    hold: str | Path
    hold_file: str
    block_file: str
    started: str
    probe_dir: Path
    servables: str
    folder: str
    bounded: str  # (tests/workers/test_queue_deadlines.py: the servable with max_queue_delay_ms)
    tmp: Path
    ca: str
    certs: dict[str, PemFiles]

    def __init__(self, proc: subprocess.Popen, address: str):
        self.proc = proc
        self.address = address
        self.output = ""

    @property
    def _stdout(self) -> IO[str]:
        """The server's output pipe: every ServerProcess is made from a Popen with stdout=PIPE and text=True."""
        assert self.proc.stdout is not None
        return self.proc.stdout

    def read_until(self, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while marker not in self.output:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not select.select([self._stdout], [], [], 0)[0]:
                raise RuntimeError(f"server did not print {marker!r}; it printed:\n{self.output}")
            if select.select([self._stdout], [], [], min(left, 0.5))[0]:
                # os.read, not readline: a buffered reader could hold a second line that select cannot see
                self.output += os.read(self._stdout.fileno(), 65536).decode(errors="replace")
        return self.output

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the server and wait for it to exit; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.output += self._stdout.read()
        return code


def start_server(tmp_path, body: str, address: str, timeout: float = 90) -> ServerProcess:
    """Run a server script (``body`` runs after ``from mindserve import server``; it must start a server on
    ``address``) in a new process and wait until it serves."""
    script = tmp_path / f"server_{abs(hash((body, address)))}.py"
    script.write_text(
        "import sys\nfrom mindserve import server\n" + textwrap.dedent(body) + "\nprint('READY', flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path)
    )
    server = ServerProcess(proc, address)
    try:
        server.read_until("READY", timeout)
    except Exception:
        server.stop(signal.SIGKILL)
        raise
    return server


def worker_pids(server: ServerProcess, name: str) -> list[int]:
    """The server's worker processes for servable ``name``."""
    pids = []
    for pid in child_pids(server.proc.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"mindserve._workers" in argv and argv[argv.index(b"--name") + 1] == name.encode():
            pids.append(pid)
    return pids


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 120.0) -> None:
    """Poll ``predicate`` until it holds; fail (a bounded wait, not a timing claim) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
