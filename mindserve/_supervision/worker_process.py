"""The master's handle on one worker process: start, handshake, jobs through the shared-memory channel, exit.

Requests go to the worker as jobs: a message block in the channel's request arena plus an entry in its job
queue. Replies come back the same way through the reply arena; the worker writes an eventfd after each, which
the master's event loop watches, so completions arrive without polling. The control socket carries the
start handshake, and its end of stream is how each side learns that the other is gone.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

from mindserve._errors import Internal, InvalidInput, ServingError, WorkerLost
from mindserve._tensor import RawTensor, StackedInputs
from mindserve._transport import blocks, jobs
from mindserve._transport.master_side import MasterChannel
from mindserve._transport.shm_channel import (
    QUEUE_CAPACITY,
    REPLIES,
    REQUESTS,
    ArenaFull,
    ChannelBroken,
    ChannelClosed,
    MessageTooBig,
    ShmChannel,
)

log = logging.getLogger("mindserve")

START_TIMEOUT_S = 600.0  # loading big models on a busy machine can be slow
STOP_TIMEOUT_S = 10.0
STATS_TIMEOUT_S = 2.0  # a worker answers for its statistics from its control thread, even mid-run


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker serves (one version of one servable on one device) and how it batches."""

    servable_directory: str
    name: str
    version: int
    device_id: int
    device_type: Optional[str]
    max_batch_size: int = 0
    max_batch_delay_ms: float = 0.0
    shm_size_mb: int = 64

    def describe(self) -> str:
        return f"servable {self.name} version {self.version} on device {self.device_id}"


@dataclass(eq=False)
class Job:
    """Instances of one request (or of a part of a large one) on their way to a worker. Its block is encoded
    once; if the worker dies before taking it, the same job goes to another worker."""

    method: str
    instances: Sequence[dict[str, RawTensor]]  # a list, or a StackedInputs read in place from the request
    future: asyncio.Future
    version: int = 0  # as the request named it (0: the newest), for error texts
    writer: blocks.BlockWriter = field(init=False)
    head: bytes = field(init=False)
    size: int = field(init=False)
    request_offset: int = -1

    def __post_init__(self) -> None:
        self.writer = blocks.BlockWriter()
        self.head, self.size = jobs.encode_job(self.writer, self.method, self.instances)

    @property
    def count(self) -> int:
        return len(self.instances)


class WorkerProcess:
    """One running worker. ``run`` resolves with one result per instance. If the process dies, the jobs it had
    not yet taken go to ``on_exit`` to be run elsewhere; those it was running fail with WORKER_UNAVAILABLE."""

    def __init__(self, spec: WorkerSpec, on_exit: Callable[["WorkerProcess", list[Job]], None]):
        self.spec = spec
        self.methods: dict = {}
        self.seldon: Optional[dict] = None
        self.in_flight = 0  # instances submitted and not yet answered
        self.alive = False
        self._on_exit = on_exit
        self._process: Optional[subprocess.Popen] = None
        self._control: Optional[MasterChannel] = None
        self._channel: Optional[ShmChannel] = None
        self._job_limit = 0  # the largest job, in bytes (set with the channel)
        self._event_fd = -1
        self._jobs: dict[int, Job] = {}  # pushed to the channel, by id
        self._backlog: deque[Job] = deque()  # waiting for room in the channel
        self._ids = itertools.count(1)
        self._watcher: Optional[asyncio.Task] = None
        self._stopping = False
        self._stats_asked: dict[int, asyncio.Future] = {}  # requests for the worker's statistics, by id
        self.last_stats: dict = {}  # its statistics as last reported (kept after it exits)

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        """Spawn the process and wait for it to load the servable; raises RuntimeError with its reason."""
        spec = self.spec
        self._channel = ShmChannel.create(spec.shm_size_mb << 20, f"worker of {spec.describe()}")
        self._job_limit = self._channel.max_message(REQUESTS) // 2  # half the arena, so that two jobs fit
        self._event_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = (worker_end.fileno(), self._channel.fd, self._event_fd)
        argv = [sys.executable, "-m", "mindserve._workers", "--fd", str(fds[0]), "--shm-fd", str(fds[1]),
                "--event-fd", str(fds[2]), "--servable-directory", os.path.abspath(spec.servable_directory),
                "--name", spec.name, "--version", str(spec.version), "--device-id", str(spec.device_id),
                "--max-batch-size", str(spec.max_batch_size), "--max-batch-delay-ms", str(spec.max_batch_delay_ms)]
        if spec.device_type:
            argv += ["--device-type", spec.device_type]
        try:
            self._process = subprocess.Popen(argv, pass_fds=fds)
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
        if header.get("op") != "ready":
            await self._reap()
            raise RuntimeError(str(header.get("error", f"worker of {spec.describe()} failed to start")))
        self.methods = header["methods"]
        self.seldon = header.get("seldon")  # how the servable answers Seldon's Classifier, if it does
        self.alive = True
        asyncio.get_running_loop().add_reader(self._event_fd, self._on_replies)
        self._watcher = asyncio.create_task(self._watch_control(), name=f"worker-{self.pid}")

    async def run(self, method: str, instances: Sequence[dict[str, RawTensor]], version: Optional[int] = None) -> list:
        """Run ``method`` on ``instances``; one ``dict[str, RawTensor]`` or ServingError per instance. A request
        too large for the channel's arena at once goes as several jobs."""
        if not self.alive:
            raise WorkerLost(f"worker of {self.spec.describe()} is not running")
        loop = asyncio.get_running_loop()
        version = self.spec.version if version is None else version
        if isinstance(instances, StackedInputs) and self._stacked_per_job(instances) >= len(instances):
            job = Job(method, instances, loop.create_future(), version)  # the usual case: one job, nothing to split
            self.submit(job)
            return await job.future
        results: list = [None] * len(instances)
        parts: list[tuple[list[int], asyncio.Future]] = []
        for indices in self._split(instances, results):
            if len(indices) == len(instances):
                part = instances
            elif isinstance(instances, StackedInputs):
                part = instances.part(indices[0], indices[-1] + 1)
            else:
                part = [instances[i] for i in indices]
            job = Job(method, part, loop.create_future(), version)
            parts.append((indices, job.future))
            self.submit(job)
        if len(parts) == 1 and len(parts[0][0]) == len(instances):  # the usual case: one job, every instance
            return await parts[0][1]
        outcomes = await asyncio.gather(*(future for _, future in parts), return_exceptions=True)
        for (indices, _), outcome in zip(parts, outcomes):
            if isinstance(outcome, ServingError):  # this part's worker died: its instances fail, not the rest
                outcome = [outcome] * len(indices)
            elif isinstance(outcome, BaseException):
                raise outcome
            for i, result in zip(indices, outcome):
                results[i] = result
        return results

    def _split(self, instances: Sequence[dict[str, RawTensor]], results: list) -> list[list[int]]:
        """Instance indices in groups whose bytes fit half the request arena, so two can be in flight; an
        instance that alone is larger gets its error in ``results``."""
        limit = self._job_limit
        groups: list[list[int]] = []
        size = 0
        if isinstance(instances, StackedInputs):  # instances alike: one size for all
            per_job = self._stacked_per_job(instances)
            if per_job:
                return [list(range(i, min(i + per_job, len(instances)))) for i in range(0, len(instances), per_job)]
        for i, inst in enumerate(instances):
            nbytes = sum(len(t.data) + blocks.ALIGN for t in inst.values()) + 256  # data, padding, header
            if nbytes > limit:
                results[i] = InvalidInput(f"instance {i} of {nbytes} bytes exceeds the worker's shared "
                                                          f"memory for requests ({limit} bytes per job); raise "
                                                          f"shm_size_mb in ServableStartConfig")
                continue
            if not groups or size + nbytes > limit:
                groups.append([])
                size = 0
            groups[-1].append(i)
            size += nbytes
        return groups

    def _stacked_per_job(self, instances: StackedInputs) -> int:
        """How many instances of a stacked request one job carries (0: not even one fits)."""
        nbytes = 256  # the header
        for col in instances.inputs.values():
            nbytes += col.row_size + blocks.ALIGN
        return self._job_limit // nbytes

    def submit(self, job: Job) -> None:
        """Queue a job on this worker: straight into the channel when there is room, else in the backlog."""
        self.in_flight += job.count
        if self._backlog or not self._push(job):
            self._backlog.append(job)
            if self._channel is not None:
                self._channel.set_backlog(True)  # the worker stops waiting for fuller batches

    def _push(self, job: Job) -> bool:
        """Write the job's block and queue it; False when the arena or the queue is full (or the worker is
        going away: the job then goes elsewhere with the backlog)."""
        channel = self._channel
        if channel is None or len(self._jobs) >= QUEUE_CAPACITY:
            return False
        try:
            offset = channel.alloc(REQUESTS, job.size)
        except ArenaFull:
            return False
        except ChannelBroken:  # dead, or wrote garbage into the channel: stopped; the job goes elsewhere
            self._kill()
            return False
        except MessageTooBig as exc:  # cannot happen after _split; a defect if it does
            self._finish(job, Internal(f"job not queued: {exc}"))
            return True
        job.writer.write(channel.view, offset, job.head)
        job_id = next(self._ids)
        try:
            channel.push_job(job_id, offset, job.size, job.count)
        except ChannelBroken:
            self._kill()
            return False
        except (ArenaFull, ChannelClosed):
            channel.release(REQUESTS, offset)
            return False
        job.request_offset = offset
        self._jobs[job_id] = job
        return True

    def _flush_backlog(self) -> None:
        if not self._backlog:  # (the channel's backlog flag was cleared when it last emptied)
            return
        while self._backlog and self.alive and self._push(self._backlog[0]):
            self._backlog.popleft()
        if not self._backlog and self._channel is not None:
            self._channel.set_backlog(False)

    def _finish(self, job: Job, outcome) -> None:
        self.in_flight -= job.count
        if job.future.done():
            return
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)

    def _on_replies(self) -> None:
        """The eventfd fired: take every completion, copy each reply out of shared memory, free both blocks."""
        try:
            os.eventfd_read(self._event_fd)
        except BlockingIOError:
            pass
        channel = self._channel
        if channel is None:  # released meanwhile: nothing more comes from this worker
            return
        try:
            done = channel.pop_done()
        except ChannelBroken:
            self._kill()  # its end of the control socket closes and _watch_control cleans up
            return
        for job_id, offset, size, _ in done:
            job = self._jobs.pop(job_id, None)
            if job is None or not channel.contains(REPLIES, offset, size):
                log.error("worker of %s sent a reply that does not describe a job; stopping it", self.spec.describe())
                self._kill()
                return
            data = bytes(channel.view[offset:offset + size])  # after this copy the worker can change nothing
            try:
                channel.release(REQUESTS, job.request_offset)
                channel.release(REPLIES, offset)
            except ValueError:  # not a block the worker allocated, or it rewrote ours: no trust any more
                self._jobs[job_id] = job  # fails with the others once the process is gone
                log.error("worker of %s answered outside its reply blocks; stopping it", self.spec.describe())
                self._kill()
                return
            outcome: Union[Sequence, ServingError]
            try:
                outcome = jobs.decode_reply(memoryview(data), job.count, self.methods[job.method]["outputs"])
            except blocks.BlockError as exc:
                outcome = Internal(f"bad reply from worker of {self.spec.describe()}: {exc}")
            self._finish(job, outcome)
        self._flush_backlog()

    async def stats(self) -> dict:
        """The worker's statistics (mindserve._metrics.worker_stats) as of now, or as last reported when it does
        not answer within STATS_TIMEOUT_S or is gone."""
        if not self.alive or self._control is None:
            return self.last_stats
        asked_id = next(self._ids)
        answer = self._stats_asked[asked_id] = asyncio.get_running_loop().create_future()
        try:
            self._control.send({"op": "stats", "id": asked_id})
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
                if isinstance(header, dict) and header.get("op") == "stats" and isinstance(header.get("stats"), dict):
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
        error = WorkerLost(f"worker of {self.spec.describe()} {reason}, the request was not "
                                                 f"completed")
        untaken: list[Job] = []
        if self._channel is not None:
            try:
                queued = {job_id for job_id, _, _, _ in self._channel.take_jobs()}
            except ChannelBroken:
                queued = set()
            untaken = [job for job_id, job in self._jobs.items() if job_id in queued]
            for job_id, job in self._jobs.items():
                if job_id not in queued:
                    self._finish(job, error)
        untaken += list(self._backlog)
        self._jobs, self._backlog = {}, deque()
        for job in untaken:
            self.in_flight -= job.count
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


