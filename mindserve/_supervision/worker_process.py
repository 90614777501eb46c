"""The master's handle on one worker process: start, handshake, jobs in flight, exit."""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from mindserve._errors import WORKER_UNAVAILABLE, ServingError
from mindserve._tensor import RawTensor
from mindserve._transport import messages
from mindserve._transport.master_side import MasterChannel

log = logging.getLogger("mindserve")

START_TIMEOUT_S = 600.0  # loading big models on a busy machine can be slow
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker serves: one version of one servable on one device."""

    servable_directory: str
    name: str
    version: int
    device_id: int
    device_type: Optional[str]

    def describe(self) -> str:
        return f"servable {self.name} version {self.version} on device {self.device_id}"


class WorkerProcess:
    """One running worker. ``run`` sends a job and resolves with one result per instance; if the process dies,
    every job in flight fails with a WORKER_UNAVAILABLE error and ``on_exit`` is called once."""

    def __init__(self, spec: WorkerSpec, on_exit: Callable[["WorkerProcess"], None]):
        self.spec = spec
        self.methods: dict = {}
        self.in_flight = 0  # instances sent and not yet answered
        self.alive = False
        self._on_exit = on_exit
        self._process: Optional[subprocess.Popen] = None
        self._channel: Optional[MasterChannel] = None
        self._pending: dict[int, tuple[asyncio.Future, int]] = {}
        self._ids = itertools.count(1)
        self._reader: Optional[asyncio.Task] = None
        self._stopping = False

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        """Spawn the process and wait for it to load the servable; raises RuntimeError with its reason."""
        master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spec = self.spec
        argv = [sys.executable, "-m", "mindserve._workers", "--fd", str(worker_end.fileno()),
                "--servable-directory", os.path.abspath(spec.servable_directory), "--name", spec.name,
                "--version", str(spec.version), "--device-id", str(spec.device_id)]
        if spec.device_type:
            argv += ["--device-type", spec.device_type]
        try:
            self._process = subprocess.Popen(argv, pass_fds=(worker_end.fileno(),))
        finally:
            worker_end.close()
        self._channel = await MasterChannel.open(master_end)
        try:
            header, _ = await asyncio.wait_for(self._channel.recv(), START_TIMEOUT_S)
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await self._wait_exit(STOP_TIMEOUT_S)
            raise RuntimeError(f"worker of {spec.describe()} exited during start with exit code {code}") from None
        except asyncio.TimeoutError:
            self._kill()
            raise RuntimeError(f"worker of {spec.describe()} did not start within {START_TIMEOUT_S:.0f} s") from None
        if header.get("op") != "ready":
            await self._reap()
            raise RuntimeError(str(header.get("error", f"worker of {spec.describe()} failed to start")))
        self.methods = header["methods"]
        self.alive = True
        self._reader = asyncio.create_task(self._read_replies(), name=f"worker-{self.pid}")

    async def run(self, method: str, instances: list[dict[str, RawTensor]]) -> list:
        """Run ``method`` on ``instances``; one ``dict[str, RawTensor]`` or ServingError per instance."""
        if not self.alive:
            raise ServingError(WORKER_UNAVAILABLE, f"worker of {self.spec.describe()} is not running")
        job_id = next(self._ids)
        buffers: list = []
        descs = [messages.pack_raws(inst, buffers) for inst in instances]
        future = asyncio.get_running_loop().create_future()
        self._pending[job_id] = (future, len(instances))
        self.in_flight += len(instances)
        self._channel.send({"op": "run", "id": job_id, "method": method, "instances": descs}, buffers)
        return await future

    async def _read_replies(self) -> None:
        try:
            while True:
                header, payload = await self._channel.recv()
                entry = self._pending.pop(header.get("id"), None)
                if entry is None:
                    continue
                future, count = entry
                self.in_flight -= count
                if not future.done():
                    future.set_result(self._decode_results(header, payload))
        except (asyncio.IncompleteReadError, ConnectionError, messages.FrameError, ValueError) as exc:
            if not self._stopping:
                log.error("worker of %s (pid %s) is gone: %s", self.spec.describe(), self.pid, exc)
        finally:
            was_alive, self.alive = self.alive, False  # no new jobs from here on
            if not self._stopping:  # the end of the stream comes first; give the exit code a moment to follow
                await self._wait_exit(1.0)
            self._lost(was_alive)

    async def _wait_exit(self, timeout: float) -> Optional[int]:
        """The process's exit code once it has exited, or None after ``timeout`` seconds.

        Polls rather than waiting in an executor thread: a master that keeps serving after its script ended
        runs inside the interpreter's exit, where executors no longer take work. Only exits are waited on
        here, never requests."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._process.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return self._process.returncode

    @staticmethod
    def _decode_results(header: dict, payload: bytearray) -> list:
        reader = messages.PayloadReader(payload)
        results = []
        for item in header["results"]:
            if "error" in item:
                code, message = item["error"]
                results.append(ServingError(int(code), str(message)))
            else:
                results.append(reader.take_raws(item["outputs"]))
        return results

    def _lost(self, was_alive: bool) -> None:
        """The channel is closed: fail what was in flight, then tell the owner (once)."""
        code = self._process.poll() if self._process else None
        reason = "was stopped" if self._stopping else f"exited unexpectedly (exit code {code})"
        error = ServingError(WORKER_UNAVAILABLE, f"worker of {self.spec.describe()} {reason}, the request was not "
                                                 f"completed")
        pending, self._pending = self._pending, {}
        self.in_flight = 0
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(error)
        if was_alive and not self._stopping:
            self._on_exit(self)

    def _kill(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.kill()

    async def _reap(self) -> None:
        """Wait for the process to end (killing it after STOP_TIMEOUT_S) and close the channel."""
        if self._process and await self._wait_exit(STOP_TIMEOUT_S) is None:
            self._kill()
            await self._wait_exit(STOP_TIMEOUT_S)
        if self._channel:
            self._channel.close()

    async def stop(self) -> None:
        """Ask the worker to finish its jobs and exit; kill it if it does not within STOP_TIMEOUT_S."""
        self._stopping = True
        if self._channel and self.alive:
            try:
                self._channel.send({"op": "exit"})
                await self._channel.drain()
            except ConnectionError:
                pass
        if self._reader:  # replies to the jobs it had still come in, up to its end of the stream
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                self._kill()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._reap()
