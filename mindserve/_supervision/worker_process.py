"""The master's handle on one worker process: start, handshake, exit, restart's raw material. The jobs between
them flow through the shared-memory channel (mindserve._transport.job_flow, this module's ``JobFlow``); the
worker writes an eventfd after each batch of replies, which the master's event loop watches, so completions
arrive without polling. The control socket carries the start handshake and the statistics questions
(mindserve._transport.worker_contract), and its end of stream is how each side learns that the other is gone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from mindserve import _defaults
from mindserve._errors import WorkerLost
from mindserve._tensor import RawTensor
from mindserve._transport import worker_contract as contract
from mindserve._transport.job_flow import Job, JobFlow
from mindserve._transport.master_side import MasterChannel
from mindserve._transport.shm_channel import ChannelBroken, ShmChannel

log = logging.getLogger("mindserve")

START_TIMEOUT_S = 600.0  # loading big models on a busy machine can be slow
STOP_TIMEOUT_S = 10.0
STATS_TIMEOUT_S = 2.0  # a worker answers for its statistics from its control thread, even mid-run


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker serves (one version of one servable on one device) and how it batches. A spec with
    ``python_worker`` k >= 1 is the k-th of num_parallel_workers' extra processes: it runs Python stages only and
    loads no model (``device_id`` is then not used)."""

    servable_directory: str
    name: str
    version: int
    device_id: int
    device_type: Optional[str]
    max_batch_size: int = _defaults.MAX_BATCH_SIZE
    max_batch_delay_ms: float = _defaults.MAX_BATCH_DELAY_MS
    shm_size_mb: int = _defaults.SHM_SIZE_MB
    python_worker: int = 0
    max_queue_delay_ms: float = _defaults.MAX_QUEUE_DELAY_MS

    @property
    def label(self) -> Union[int, str]:
        """How metrics and statistics name the worker: its device id, or ``"python-<k>"``."""
        return f"python-{self.python_worker}" if self.python_worker else self.device_id

    def describe(self) -> str:
        if self.python_worker:
            return f"servable {self.name} version {self.version} in Python-stage process {self.python_worker}"
        return f"servable {self.name} version {self.version} on device {self.device_id}"


class WorkerProcess:
    """One running worker. ``run`` resolves with one result per instance. If the process dies, the jobs it had
    not yet taken go to ``on_exit`` to be run elsewhere; those it was running fail with WORKER_UNAVAILABLE."""

    def __init__(self, spec: WorkerSpec, on_exit: Callable[["WorkerProcess", list[Job]], None]):
        self.spec = spec
        self.methods: dict = {}
        self.seldon: Optional[dict] = None
        self.alive = False
        self._on_exit = on_exit
        self._process: Optional[subprocess.Popen] = None
        self._control: Optional[MasterChannel] = None
        self._channel: Optional[ShmChannel] = None
        self.flow: Optional[JobFlow] = None  # the jobs through the channel, from the handshake on
        self._event_fd = -1
        self._watcher: Optional[asyncio.Task] = None
        self._stopping = False
        self._asked = itertools.count(1)
        self._stats_asked: dict[int, asyncio.Future] = {}  # requests for the worker's statistics, by id
        self.last_stats: dict = {}  # its statistics as last reported (kept after it exits)

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process else None

    @property
    def in_flight(self) -> int:
        """Instances submitted and not yet answered."""
        return self.flow.in_flight if self.flow is not None else 0

    async def start(self) -> None:
        """Spawn the process and wait for it to load the servable; raises RuntimeError with its reason."""
        spec = self.spec
        self._channel = ShmChannel.create(spec.shm_size_mb << 20, f"worker of {spec.describe()}")
        self._event_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        args = contract.WorkerArgs(
            worker_end.fileno(),
            self._channel.fd,
            self._event_fd,
            os.path.abspath(spec.servable_directory),
            spec.name,
            spec.version,
            spec.device_id,
            spec.device_type or None,
            spec.max_batch_size,
            spec.max_batch_delay_ms,
            1 if spec.python_worker else None,
        )
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "mindserve._workers", *args.to_argv()],
                pass_fds=(args.control_fd, args.shm_fd, args.event_fd),
            )
        except BaseException:
            self._release_resources()
            raise
        finally:
            worker_end.close()
            self._channel.close_fd()  # the mapping stays; only the worker needs the descriptor
        try:
            self._control = await MasterChannel.open(master_end)
            header, _ = await asyncio.wait_for(self._control.recv(), START_TIMEOUT_S)
        except asyncio.CancelledError:  # the servable stops while this worker starts: end it, leave nothing
            if self._control is None:
                master_end.close()
            self._kill()
            await self._reap()
            raise
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await self._wait_exit(STOP_TIMEOUT_S)
            self._release_resources()
            raise RuntimeError(f"worker of {spec.describe()} exited during start with exit code {code}") from None
        except asyncio.TimeoutError:
            self._kill()
            await self._reap()
            raise RuntimeError(f"worker of {spec.describe()} did not start within {START_TIMEOUT_S:.0f} s") from None
        if header.get("op") != contract.READY:
            await self._reap()
            raise RuntimeError(str(header.get("error", f"worker of {spec.describe()} failed to start")))
        self.methods = header["methods"]
        self.seldon = header.get("seldon")  # how the servable answers Seldon's Classifier, if it does
        self.flow = JobFlow(self._channel, spec.describe(), self._kill, spec.max_queue_delay_ms / 1000)
        self.flow.outputs = {name: method["outputs"] for name, method in self.methods.items()}
        self.alive = True
        asyncio.get_running_loop().add_reader(self._event_fd, self._on_replies)
        self._watcher = asyncio.create_task(self._watch_control(), name=f"worker-{self.pid}")

    async def run(self, method: str, instances: Sequence[dict[str, RawTensor]], version: Optional[int] = None) -> list:
        """Run ``method`` on ``instances``; one ``dict[str, RawTensor]`` or ServingError per instance (see
        JobFlow.run). ``version`` is the one the request named, for error texts (None: this worker's)."""
        if not self.alive or self.flow is None:
            raise WorkerLost(f"worker of {self.spec.describe()} is not running")
        return await self.flow.run(method, instances, self.spec.version if version is None else version)

    def submit(self, job: Job) -> None:
        """Queue a job (one a dead worker never took) on this worker."""
        assert self.flow is not None  # only live workers are given jobs
        self.flow.submit(job)

    def _on_replies(self) -> None:
        """The eventfd fired: the flow takes every completion."""
        try:
            os.eventfd_read(self._event_fd)
        except BlockingIOError:
            pass
        if self.flow is not None:
            self.flow.take_replies()

    async def stats(self) -> dict:
        """The worker's statistics (mindserve._metrics.worker_stats) as of now, or as last reported when it does
        not answer within STATS_TIMEOUT_S or is gone."""
        if not self.alive or self._control is None:
            return self.last_stats
        asked_id = next(self._asked)
        answer = self._stats_asked[asked_id] = asyncio.get_running_loop().create_future()
        try:
            self._control.send(contract.stats_request(asked_id))
            await asyncio.wait_for(answer, STATS_TIMEOUT_S)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
        finally:
            self._stats_asked.pop(asked_id, None)
        return self.last_stats

    async def _watch_control(self) -> None:
        """Take the worker's reports (its statistics, when asked) until the end of the control stream: the worker
        has exited (or was stopped)."""
        assert self._control is not None  # set by start, before this task
        try:
            while True:
                header, _ = await self._control.recv()
                if (
                    isinstance(header, dict)
                    and header.get("op") == contract.STATS
                    and isinstance(header.get("stats"), dict)
                ):
                    self.last_stats = header["stats"]
                    asked = header.get("id")
                    answer = self._stats_asked.get(asked) if isinstance(asked, int) else None
                    if answer is not None and not answer.done():
                        answer.set_result(None)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        for answer in self._stats_asked.values():
            if not answer.done():
                answer.set_result(None)
        was_alive, self.alive = self.alive, False  # no new jobs from here on
        if not self._stopping:  # the end of the stream comes first; give the exit code a moment to follow
            log.error("worker of %s (pid %s) is gone", self.spec.describe(), self.pid)
            await self._wait_exit(1.0)
        self._lost(was_alive)

    async def _wait_exit(self, timeout: float) -> Optional[int]:
        """The process's exit code once it has exited, or None after ``timeout`` seconds.

        Polls rather than waiting in an executor thread: a master that keeps serving after its script ended
        runs inside the interpreter's exit, where executors no longer take work. Only exits are waited on
        here, never requests."""
        process = self._process
        if process is None:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while process.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return process.returncode

    def _lost(self, was_alive: bool) -> None:
        """The worker is gone: jobs it never took go back to the owner, jobs it was running fail; then the
        shared memory is freed."""
        code = self._process.poll() if self._process else None
        reason = "was stopped" if self._stopping else f"exited unexpectedly (exit code {code})"
        error = WorkerLost(f"worker of {self.spec.describe()} {reason}, the request was not completed")
        untaken = self.flow.settle(error) if self.flow is not None else []
        self._release_resources()
        if self._stopping or not was_alive:
            for job in untaken:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        self._on_exit(self, untaken)

    def _release_resources(self) -> None:
        if self._event_fd >= 0:
            try:
                asyncio.get_running_loop().remove_reader(self._event_fd)
            except RuntimeError:
                pass
            os.close(self._event_fd)
            self._event_fd = -1
        if self.flow is not None:
            self.flow.open = False  # (settled already, unless the process never got that far)
        if self._channel is not None:
            self._channel.close_fd()
            self._channel.unmap()
            self._channel = None

    def _kill(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.kill()

    async def _reap(self) -> None:
        """Wait for the process to end (killing it after STOP_TIMEOUT_S), close the control socket, free the
        shared memory."""
        if self._process and await self._wait_exit(STOP_TIMEOUT_S) is None:
            self._kill()
            await self._wait_exit(STOP_TIMEOUT_S)
        if self._control:
            self._control.close()
        self._release_resources()

    async def stop(self) -> None:
        """Close the channel: the worker finishes the jobs it has and exits; it is killed if it does not within
        STOP_TIMEOUT_S. Jobs still in the backlog then fail."""
        self._stopping = True
        if self._channel is not None and self.alive:
            try:
                self._channel.close()
            except ChannelBroken:
                self._kill()
        if self._watcher:
            try:
                await asyncio.wait_for(asyncio.shield(self._watcher), STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                self._kill()
            await asyncio.gather(self._watcher, return_exceptions=True)
        await self._reap()
