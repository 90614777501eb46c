"""The master's side of the job flow to one worker: requests become jobs (a message block in the channel's
request arena plus an entry in its job queue), replies come back through the reply arena and resolve each
job's future. The worker's side of the same flow is mindserve._workers.job_io.

This is where a request too large for the arena at once is split into several jobs, where jobs wait (the
backlog) while the channel has no room, and where a reply is checked before it is believed: a worker that
answers outside its reply blocks, or for a job it was never given, or whose channel turns out corrupt, is
reported (``on_broken``) and trusted no more. What happens to the process then is supervision's business
(mindserve._supervision.worker_process); what happens to its jobs is ``settle``'s.

Work whose client is gone is never started: a job carries the request's deadline (mindserve._dispatch.deadlines).
A job still in the backlog when its request is cancelled or its deadline passes is dropped there; one already in
the channel carries its remaining time and, once its request is cancelled, a cancel mark, both in its block's job
word (``blocks.JOB_CANCELLED``), and the worker answers it without running it (mindserve._workers.__main__).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

from mindserve._dispatch import deadlines
from mindserve._errors import (
    DROPPED_CANCELLED_TEXT,
    DROPPED_DEADLINE_TEXT,
    Cancelled,
    DeadlineExceeded,
    Internal,
    InvalidInput,
    ServingError,
)
from mindserve._tensor import RawTensor, StackedInputs
from mindserve._transport import blocks, jobs
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


@dataclass(eq=False)
class Job:
    """Instances of one request (or of a part of a large one) on their way to a worker. Its block is encoded
    once; if the worker dies before taking it, the same job goes to another worker."""

    method: str
    instances: Sequence[dict[str, RawTensor]]  # a list, or a StackedInputs read in place from the request
    future: asyncio.Future
    version: int = 0  # as the request named it (0: the newest), for error texts
    deadline: Optional[float] = None  # by when it must start (time.monotonic() seconds), None: any time
    writer: blocks.BlockWriter = field(init=False)
    head: bytes = field(init=False)
    size: int = field(init=False)
    request_offset: int = -1
    job_id: int = -1  # while in the channel
    word: int = 0  # its block's job word as written

    def __post_init__(self) -> None:
        self.writer = blocks.BlockWriter()
        self.head, self.size = jobs.encode_job(self.writer, self.method, self.instances)

    @property
    def count(self) -> int:
        return len(self.instances)


class JobFlow:
    """Jobs to one worker and their replies, over its channel (see the module text).

    ``describe`` names the worker in texts; ``outputs`` gives each method's output names (to read replies);
    ``on_broken`` is called when the worker can be trusted no more (a corrupt channel, a reply that describes
    no job): the caller ends the process, then calls ``settle``.
    """

    def __init__(self, channel: ShmChannel, describe: str, on_broken: Callable[[], None], queue_delay_s: float = 0):
        self.channel = channel
        self.queue_delay_s = queue_delay_s  # how long a job may wait to start (the servable's max_queue_delay_ms)
        self.outputs: dict[str, list[str]] = {}  # method -> output names, once the worker has reported them
        self._describe = describe
        self._on_broken = on_broken
        self._job_limit = channel.max_message(REQUESTS) // 2  # half the arena, so that two jobs fit
        self.in_flight = 0  # instances submitted and not yet answered
        self._jobs: dict[int, Job] = {}  # pushed to the channel, by id
        self._backlog: deque[Job] = deque()  # waiting for room in the channel
        self._ids = itertools.count(1)
        self.open = True  # False once settled: nothing more is pushed

    async def run(self, method: str, instances: Sequence[dict[str, RawTensor]], version: int) -> list:
        """Run ``method`` on ``instances``; one ``dict[str, RawTensor]`` or ServingError per instance. A request
        too large for the channel's arena at once goes as several jobs."""
        loop = asyncio.get_running_loop()
        deadline = deadlines.current()  # by when the jobs must start: the request's deadline, or the queue bound
        if self.queue_delay_s:
            queued_by = time.monotonic() + self.queue_delay_s
            deadline = queued_by if deadline is None else min(deadline, queued_by)
        if isinstance(instances, StackedInputs) and self._stacked_per_job(instances) >= len(instances):
            # the usual case: one job, nothing to split
            job = Job(method, instances, loop.create_future(), version, deadline)
            self.submit(job)
            try:
                return await job.future
            except asyncio.CancelledError:
                self.cancel(job)
                raise
        results: list = [None] * len(instances)
        made: list[Job] = []
        parts: list[tuple[list[int], asyncio.Future]] = []
        for indices in self._split(instances, results):
            if len(indices) == len(instances):
                part = instances
            elif isinstance(instances, StackedInputs):
                part = instances.part(indices[0], indices[-1] + 1)
            else:
                part = [instances[i] for i in indices]
            job = Job(method, part, loop.create_future(), version, deadline)
            parts.append((indices, job.future))
            made.append(job)
            self.submit(job)
        try:
            if len(parts) == 1 and len(parts[0][0]) == len(instances):  # the usual case: one job, every instance
                return await parts[0][1]
            outcomes = await asyncio.gather(*(future for _, future in parts), return_exceptions=True)
        except asyncio.CancelledError:
            for job in made:
                self.cancel(job)
            raise
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
                results[i] = InvalidInput(
                    f"instance {i} of {nbytes} bytes exceeds the worker's shared memory for "
                    f"requests ({limit} bytes per job); raise shm_size_mb in "
                    f"ServableStartConfig"
                )
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
        """Queue a job: straight into the channel when there is room, else in the backlog."""
        self.in_flight += job.count
        if self._backlog or not self._push(job):
            self._backlog.append(job)
            if self.open:
                self.channel.set_backlog(True)  # the worker stops waiting for fuller batches

    def cancel(self, job: Job) -> None:
        """The job's request was cancelled (or its deadline passed): in the backlog it is dropped when its turn
        comes; in the channel, its cancel mark tells the worker not to start it."""
        if job.job_id in self._jobs and self.open:
            job.word |= blocks.JOB_CANCELLED
            blocks.set_job_word(self.channel.view, job.request_offset, job.word)

    def _dropped(self, job: Job) -> bool:
        """Whether the job is dropped rather than queued: its request was cancelled, or its deadline has passed
        (answered so); else its job word is set to the time it may still wait."""
        if job.future.done():  # cancelled: its client is gone
            self._finish(job, Cancelled(DROPPED_CANCELLED_TEXT))
            return True
        job.word = 0
        if job.deadline is not None:
            left = job.deadline - time.monotonic()
            if left <= 0:
                self._finish(job, DeadlineExceeded(DROPPED_DEADLINE_TEXT))
                return True
            job.word = min(math.ceil(left * 1000), blocks.JOB_BUDGET_MS)
        return False

    def _push(self, job: Job) -> bool:
        """Write the job's block and queue it (or drop it, ``_dropped``); False when the arena or the queue is
        full (or the worker is going away: the job then goes elsewhere with the backlog)."""
        channel = self.channel
        if not self.open or len(self._jobs) >= QUEUE_CAPACITY:
            return False
        if self._dropped(job):
            return True
        try:
            offset = channel.alloc(REQUESTS, job.size)
        except ArenaFull:
            return False
        except ChannelBroken:  # dead, or wrote garbage into the channel: the job goes elsewhere
            self._on_broken()
            return False
        except MessageTooBig as exc:  # cannot happen after _split; a defect if it does
            self._finish(job, Internal(f"job not queued: {exc}"))
            return True
        job.writer.write(channel.view, offset, job.head)
        if job.word:
            blocks.set_job_word(channel.view, offset, job.word)
        job_id = next(self._ids)
        try:
            channel.push_job(job_id, offset, job.size, job.count)
        except ChannelBroken:
            self._on_broken()
            return False
        except (ArenaFull, ChannelClosed):
            channel.release(REQUESTS, offset)
            return False
        job.request_offset, job.job_id = offset, job_id
        self._jobs[job_id] = job
        return True

    def flush_backlog(self) -> None:
        """Push what waits in the backlog while the channel has room."""
        if not self._backlog:  # (the channel's backlog flag was cleared when it last emptied)
            return
        while self._backlog and self.open and self._push(self._backlog[0]):
            self._backlog.popleft()
        if not self._backlog and self.open:
            self.channel.set_backlog(False)

    def _finish(self, job: Job, outcome: Union[Sequence, BaseException]) -> None:
        self.in_flight -= job.count
        if job.future.done():
            return
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)

    def take_replies(self) -> None:
        """The worker signalled completions: take every one, copy each reply out of shared memory, free both
        blocks, resolve the jobs; then push what the freed room lets through."""
        if not self.open:  # settled meanwhile: nothing more comes from this worker
            return
        channel = self.channel
        try:
            done = channel.pop_done()
        except ChannelBroken:
            self._on_broken()
            return
        for job_id, offset, size, _ in done:
            job = self._jobs.pop(job_id, None)
            if job is None or not channel.contains(REPLIES, offset, size):
                log.error("worker of %s sent a reply that does not describe a job; stopping it", self._describe)
                self._on_broken()
                return
            data = bytes(channel.view[offset : offset + size])  # after this copy the worker can change nothing
            try:
                channel.release(REQUESTS, job.request_offset)
                channel.release(REPLIES, offset)
            except ValueError:  # not a block the worker allocated, or it rewrote ours: no trust any more
                self._jobs[job_id] = job  # fails with the others once the process is gone
                log.error("worker of %s answered outside its reply blocks; stopping it", self._describe)
                self._on_broken()
                return
            outcome: Union[Sequence, ServingError]
            try:
                names = self.outputs.get(job.method)
                if names is None:  # a defect (a job whose replies nobody described): this job fails, not the loop
                    raise blocks.BlockError(f"no outputs known for jobs of {job.method}")
                outcome = jobs.decode_reply(memoryview(data), job.count, names)
            except blocks.BlockError as exc:
                outcome = Internal(f"bad reply from worker of {self._describe}: {exc}")
            self._finish(job, outcome)
        self.flush_backlog()

    def settle(self, error: ServingError) -> list[Job]:
        """The worker is gone: the jobs it was running fail with ``error``; those it never took (still queued,
        or in the backlog) are returned, to run elsewhere. Nothing is pushed from now on."""
        untaken: list[Job] = []
        if self.open:
            try:
                queued = {job_id for job_id, _, _, _ in self.channel.take_jobs()}
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
        self.open = False
        return untaken
