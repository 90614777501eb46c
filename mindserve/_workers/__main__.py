"""Entry point of a worker process, started by the master:

    python -m mindserve._workers --control-fd FD --shm-fd SHM --event-fd EVENT --servable-directory DIR
                                 --name NAME --version N --device-id ID [--device-type TYPE]
                                 [--max-batch-size B] [--max-batch-delay-ms D] [--python-only 1]

(mindserve._transport.worker_contract.WorkerArgs defines these for both sides.) FD is the worker's end of a
connected stream socket (control: the ``ready``/``failed`` handshake, and the way
the worker learns that the master is gone). SHM is the channel segment (native/channel.h) that carries the
jobs and replies; EVENT the master's eventfd, written after each batch's replies. The worker loads the servable,
reports, then takes batches of jobs until the master closes the channel; it never outlives the master. With
--python-only 1 it is one of num_parallel_workers' extra processes: it loads no model and runs Python stages,
as whole methods or as segments of a method (a job named ``<method>#<first>-<last>``, see worker_contract).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from itertools import groupby
from typing import Any, Callable, Optional

import numpy as np

from mindserve import _dtypes
from mindserve._errors import (
    DROPPED_CANCELLED,
    DROPPED_CANCELLED_TEXT,
    DROPPED_DEADLINE,
    DROPPED_DEADLINE_TEXT,
    SYSTEM_ERROR,
    ServingError,
)
from mindserve._metrics.worker_stats import WorkerStats
from mindserve._transport import blocks
from mindserve._transport import worker_contract as contract
from mindserve._transport.shm_channel import REQUESTS, ChannelClosed, ShmChannel
from mindserve._transport.worker_side import WorkerChannel
from mindserve._workers.columns import Column
from mindserve._workers.executor import MethodExecutor
from mindserve._workers.fast_lane import FastLane
from mindserve._workers.job_io import Job, notify, read_job, reply_block, send_error, send_reply
from mindserve._workers.loader import batch_limit, load_servable, method_signatures


def _watch_master(control: WorkerChannel, stats: WorkerStats) -> None:
    """Control thread: answer the master's requests for this worker's statistics (even in the middle of a model
    run), and end the process at once when the master is gone."""
    while True:
        message = control.recv()
        if message is None:
            os._exit(0)
        if message[0].get("op") == contract.STATS:
            control.send(contract.stats_reply(message[0].get("id"), stats.snapshot()))


class _Batch:
    """What the statistics need of a popped batch: each job's wait in the queue, and the time spent reading."""

    def __init__(self, stats: WorkerStats, queued: dict[int, int]):
        self.stats = stats
        self.queued = queued  # job id -> nanoseconds it waited in the queue
        self.read_ns: dict[int, int] = {}  # job id -> nanoseconds its block took to read


def _run_method(
    executor: MethodExecutor,
    method: str,
    jobs: list[Job],
    channel: ShmChannel,
    event_fd: int,
    batch: Optional[_Batch] = None,
) -> None:
    """Run one method over the instances of several jobs as one batch, reply to each job, then wake the master
    once for all of these replies (one wake-up per batch, not per job: the master takes them in one go)."""
    try:
        _answer_jobs(executor, method, jobs, channel, event_fd, batch)
    finally:
        notify(event_fd)


def _answer_jobs(
    executor: MethodExecutor,
    method: str,
    jobs: list[Job],
    channel: ShmChannel,
    event_fd: int,
    batch: Optional[_Batch] = None,
) -> None:
    segment = contract.parse_segment(method)
    if method not in executor.servable.methods and not _is_segment(executor, segment):
        for job in jobs:
            send_error(
                channel, event_fd, job.id, job.count, ServingError(SYSTEM_ERROR, f"unknown method {method}"), wake=False
            )
        return
    total = sum(job.count for job in jobs)
    timings: list[tuple[str, int]] = []
    failure = None
    try:
        if segment is None:
            outputs, errors = _run_whole(executor, method, jobs, total, timings)
        else:
            outputs, errors = _run_segment(executor, segment, jobs, total, timings)
            failure = _crossing_failure(segment[0])
    except Exception as exc:  # a defect of the worker itself: fail these jobs, keep serving
        error = exc if isinstance(exc, ServingError) else ServingError(SYSTEM_ERROR, f"worker error: {exc}")
        for job in jobs:
            send_error(channel, event_fd, job.id, job.count, error, wake=False)
        return
    replying = time.perf_counter_ns()
    start = 0
    for job in jobs:
        stop = start + job.count
        writer, header = reply_block(
            method, job.count, {n: c.slice(start, stop) for n, c in outputs.items()}, errors[start:stop], failure
        )
        send_reply(channel, event_fd, job.id, writer, header, wake=False)
        start = stop
    if batch is not None:
        whole = segment is None or segment[2] == len(executor.servable.methods[segment[0]].stages)
        batch.stats.record(
            method if segment is None else segment[0],
            [batch.queued.get(job.id, 0) for job in jobs],
            timings,
            total,
            sum(batch.read_ns.get(job.id, 0) for job in jobs),
            time.perf_counter_ns() - replying,
            whole,
        )


def _is_segment(executor: MethodExecutor, segment: Optional[tuple[str, int, int]]) -> bool:
    if segment is None or segment[0] not in executor.servable.methods:
        return False
    return 1 <= segment[1] <= segment[2] <= len(executor.servable.methods[segment[0]].stages)


def _joined(jobs: list[Job], names: list[str]) -> dict[str, Column]:
    """Each named input over the instances of every job, in job order; ServingError when a job lacks one."""
    for job in jobs:
        missing = [n for n in names if n not in job.inputs]
        if missing:
            raise ServingError(SYSTEM_ERROR, f"job without input {missing[0]}")
    return {n: Column([chunk for job in jobs for chunk in job.inputs[n].chunks]) for n in names}


def _run_whole(executor: MethodExecutor, method: str, jobs: list[Job], total: int, timings: list) -> tuple:
    return executor.run_columns(method, _joined(jobs, executor.servable.methods[method].input_names), total, timings)


def _run_segment(
    executor: MethodExecutor, segment: tuple[str, int, int], jobs: list[Job], total: int, timings: list
) -> tuple:
    """A segment job (num_parallel_workers): its inputs are values named by reference, and so are the values it
    hands on."""
    name, first, last = segment
    method = executor.servable.methods[name]
    names = list(jobs[0].inputs)
    given = {}
    for value, column in _joined(jobs, names).items():
        ref = contract.value_ref(method.input_names, value)
        if ref is None or ref[0] >= first:
            raise ServingError(SYSTEM_ERROR, f"segment job with unknown value {value}")
        given[ref] = column
    outputs, errors = executor.run_segment(name, first, last, given, total, timings)
    if not any(errors):  # values alike go on stacked: read whole by the master and the next worker (a model batch)
        outputs = {ref: _stacked(column) for ref, column in outputs.items()}
    return {contract.value_name(method.input_names, *ref): column for ref, column in outputs.items()}, errors


def _stacked(column: Column) -> Column:
    """A column of per-instance numeric arrays of one dtype and shape (what Python stages return) as one stacked
    array; any other column as it is."""
    if column.stacked_type() is not None:
        return column
    rows = column.rows()
    first = rows[0] if rows else None
    if not isinstance(first, np.ndarray) or first.ndim == 0 or _dtypes.CODE_OF.get(first.dtype) is None:
        return column
    if any(not isinstance(r, np.ndarray) or r.dtype != first.dtype or r.shape != first.shape for r in rows):
        return column
    return Column([np.stack(rows)])


def _crossing_failure(method: str) -> Callable[[str, Any], str]:
    """The text of an instance whose value a segment hands on cannot go to another process."""

    def text(name: str, value: Any) -> str:
        stage, _, index = name.partition(".")
        kind = f"numpy array of {value.dtype}" if isinstance(value, np.ndarray) else str(type(value))
        return (
            f"Method '{method}' stage {stage} output {index} cannot go to another worker process "
            f"(num_parallel_workers): unsupported type {kind}, a value handed on between processes must be a "
            f"numpy array, str, bytes or a scalar"
        )

    return text


def serve(
    executor: MethodExecutor,
    channel: ShmChannel,
    event_fd: int,
    max_items: int,
    max_delay_s: float,
    stats: Optional[WorkerStats] = None,
) -> None:
    """Take batches of jobs until the channel is closed; jobs of one method in a batch run together, through
    the fast lane when they qualify for it. Each execution is counted in ``stats``."""
    stats = stats if stats is not None else WorkerStats()
    lane = FastLane(executor, channel, event_fd, stats)
    while True:
        try:
            entries = channel.pop_batch(max_items, max_delay_s)
        except ChannelClosed:
            return
        queued = channel.queued_ns(time.monotonic_ns())
        entries, queued = drop_unwanted(channel, event_fd, entries, queued)
        if not entries:
            continue
        if lane.run(entries, queued):
            notify(event_fd)
            continue
        answer_batch(
            executor, entries, channel, event_fd, _Batch(stats, {entry[0]: ns for entry, ns in zip(entries, queued)})
        )


DROPPED_TEXTS = {
    DROPPED_CANCELLED: DROPPED_CANCELLED_TEXT,
    DROPPED_DEADLINE: DROPPED_DEADLINE_TEXT,
}


def drop_unwanted(channel: ShmChannel, event_fd: int, entries: list, queued: list[int]) -> tuple[list, list[int]]:
    """The popped jobs whose work is still wanted, and how long each waited; the others, cancelled by the master
    (their client is gone) or past the time they could wait (their deadline), are answered unstarted."""
    kept, waits = [], []
    dropped = False
    for entry, waited in zip(entries, queued):
        job_id, offset, size, weight = entry
        if not channel.contains(REQUESTS, offset, size) or size < 8:
            kept.append(entry)  # (the readers refuse it, with their own text)
            waits.append(waited)
            continue
        word = blocks.job_word(channel.view, offset)
        budget_ms = word & blocks.JOB_BUDGET_MS
        code = (
            DROPPED_CANCELLED
            if word & blocks.JOB_CANCELLED
            else DROPPED_DEADLINE
            if budget_ms and waited > budget_ms * 1_000_000
            else None
        )
        if code is None:
            kept.append(entry)
            waits.append(waited)
        else:
            send_error(channel, event_fd, job_id, max(weight, 1), ServingError(code, DROPPED_TEXTS[code]), wake=False)
            dropped = True
    if dropped:
        notify(event_fd)
    return kept, waits


def answer_batch(
    executor: MethodExecutor, entries: list, channel: ShmChannel, event_fd: int, batch: Optional[_Batch] = None
) -> None:
    """The general path over a popped batch: every job read (one that cannot be read, whatever it holds, fails
    alone and the worker goes on), then the jobs of each method run together."""
    jobs = []
    for job_id, offset, size, weight in entries:
        began = time.perf_counter_ns()
        try:
            jobs.append(read_job(channel, job_id, offset, size))
        except Exception as exc:  # one error per instance (the weight): the master checks the count
            send_error(channel, event_fd, job_id, max(weight, 1), ServingError(SYSTEM_ERROR, f"bad job: {exc}"))
        if batch is not None:
            batch.read_ns[job_id] = time.perf_counter_ns() - began
    for method, group in groupby(sorted(jobs, key=lambda j: j.method), key=lambda j: j.method):
        _run_method(executor, method, list(group), channel, event_fd, batch)


def main() -> None:
    args = contract.WorkerArgs.from_argv()
    # Ctrl-C, or a SIGTERM sent to the whole process group, is the master's to handle: it drains the requests
    # in progress and then closes the channel (a worker also exits as soon as the master is gone).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    control = WorkerChannel(socket.socket(fileno=args.control_fd))
    try:
        channel = ShmChannel.attach(args.shm_fd)
        executor = load_servable(
            args.servable_directory,
            args.name,
            args.version,
            args.device_type,
            args.device_id,
            args.max_batch_size or None,
            bool(args.python_only),
        )
    except Exception as exc:
        control.send(contract.failed_message(str(exc)))
        control.close()
        raise SystemExit(1)
    seldon = executor.servable.seldon
    directory = os.path.join(os.path.abspath(args.servable_directory), args.name)
    control.send(
        contract.ready_message(
            os.getpid(), method_signatures(executor), seldon.report(directory) if seldon is not None else None
        )
    )
    stats = WorkerStats()
    threading.Thread(target=_watch_master, args=(control, stats), daemon=True, name="master-watch").start()
    serve(
        executor,
        channel,
        args.event_fd,
        batch_limit(executor, args.max_batch_size),
        args.max_batch_delay_ms / 1000.0,
        stats,
    )


if __name__ == "__main__":
    main()
