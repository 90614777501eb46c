"""The native channel's job and done queues (native/channel.c) through ShmChannel: FIFO order, the weight and
entry bounds of a batch, batching deadlines, close, a full queue, and the eventfd of completions.

Every call that could block is made from a thread joined with a generous timeout (support/channel.py's Call),
so that a hang fails the test instead of stalling the run; no test asserts how long anything took."""

from __future__ import annotations

import errno
import os
import time

import pytest

from mindserve._native import ffi, lib
from mindserve._transport.shm_channel import QUEUE_CAPACITY, ArenaFull, ChannelClosed
from support.channel import U64_MAX, Call, attached

# -------------------------------------------------------------------------------------------------------- queues


def test_jobs_come_out_in_fifo_order_unchanged(channel):
    jobs = [(i * 7919 % 1000, 4096 + 64 * i, i, 1 + i % 3) for i in range(20)] + [(U64_MAX, U64_MAX, U64_MAX, 1)]
    for job in jobs:
        channel.push_job(*job)
    assert channel.pop_batch(0, 0) == jobs
    assert channel.take_jobs() == []


def test_max_items_limits_the_weight_taken(channel):
    for job_id, weight in enumerate([3, 2, 4, 1, 1]):
        channel.push_job(job_id, 0, 0, weight)
    assert [j[0] for j in channel.pop_batch(5, 0)] == [0, 1]  # 3 + 2; 4 more would make 9
    assert [j[0] for j in channel.pop_batch(5, 0)] == [2, 3]  # 4 + 1
    assert [j[0] for j in channel.pop_batch(5, 0)] == [4]

    for job_id, weight in [(10, 7), (11, 1), (12, 2)]:
        channel.push_job(job_id, 0, 0, weight)
    assert channel.pop_batch(5, 0) == [(10, 0, 0, 7)]  # heavier than the limit: taken alone
    assert channel.pop_batch(0, 0) == [(11, 0, 0, 1), (12, 0, 0, 2)]  # 0: no limit


def test_out_capacity_limits_the_entries_taken(channel):
    base = channel.layout
    for job_id in range(5):
        channel.push_job(job_id, 0, 0, 1)
    out = ffi.new("ms_entry[]", 2)
    count = ffi.new("size_t *", 99)
    assert lib.ms_pop_batch(base, 0, 0, out, 0, count) == lib.MS_EINVAL
    assert count[0] == 0
    assert lib.ms_pop_batch(base, 0, 0, out, 2, count) == lib.MS_OK
    assert count[0] == 2 and [out[0].id, out[1].id] == [0, 1]
    # a delay does not wait once the output is full
    call = Call(lambda: (lib.ms_pop_batch(base, 100, 60 * 10**9, out, 2, count), count[0], out[0].id))
    assert call.result() == (lib.MS_OK, 2, 2)
    assert lib.ms_take_jobs(base, out, 1, count) == lib.MS_OK
    assert count[0] == 1 and out[0].id == 4
    assert lib.ms_take_jobs(base, out, 2, count) == lib.MS_OK and count[0] == 0


def test_max_delay_does_not_wait_when_max_items_are_queued(channel):
    channel.push_job(1, 0, 0, 2)
    channel.push_job(2, 0, 0, 2)
    channel.push_job(3, 0, 0, 2)
    assert [j[0] for j in Call(channel.pop_batch, 4, 60.0).result()] == [1, 2]
    assert [j[0] for j in Call(channel.pop_batch, 1, 60.0).result()] == [3]  # one job over the limit: no wait


def test_max_delay_with_fewer_items_returns_what_is_queued_at_the_deadline(channel):
    channel.push_job(1, 0, 0, 1)
    assert Call(channel.pop_batch, 4, 0.05).result() == [(1, 0, 0, 1)]
    channel.push_job(2, 0, 0, 1)
    channel.push_job(3, 0, 0, 1)
    assert [j[0] for j in Call(channel.pop_batch, 0, 0.05).result()] == [2, 3]  # no limit: the deadline ends it


def test_a_job_pushed_during_the_delay_joins_the_batch(channel):
    worker = attached(channel)
    try:
        channel.push_job(1, 0, 0, 1)
        call = Call(worker.pop_batch, 2, 60.0)
        channel.push_job(2, 0, 0, 1)  # before or during the wait: either way the batch is then complete
        assert [j[0] for j in call.result()] == [1, 2]
    finally:
        worker.unmap()


def test_a_job_pushed_by_another_thread_wakes_a_waiting_pop(channel):
    worker = attached(channel)
    try:
        call = Call(worker.pop_batch, 0, 0)
        time.sleep(0.05)
        assert call.thread.is_alive()  # nothing to take: it waits
        channel.push_job(9, 4096, 10, 1)
        assert call.result() == [(9, 4096, 10, 1)]

        call = Call(worker.pop_batch, 3, 0.02)  # waits for a job, then up to 20 ms for more
        channel.push_job(10, 0, 0, 1)
        assert [j[0] for j in call.result()][0] == 10
    finally:
        worker.unmap()
    channel.take_jobs()


def test_close_lets_the_worker_drain_then_raises_closed(channel):
    for job_id in range(3):
        channel.push_job(job_id, 0, 0, 1)
    channel.close()
    assert [j[0] for j in Call(channel.pop_batch, 10, 60.0).result()] == [0, 1, 2]  # no waiting once closed
    with pytest.raises(ChannelClosed, match=r"^batch pop failed \(status -4\)$"):
        channel.pop_batch(0, 0)
    with pytest.raises(ChannelClosed, match=r"^job push failed \(status -4\)$"):
        channel.push_job(3, 0, 0, 1)
    channel.close()  # closing twice is harmless
    assert channel.take_jobs() == []
    channel.push_done(0, 4096, 8, -1)  # replies to the drained jobs still flow
    assert channel.pop_done() == [(0, 4096, 8, 0)]


def test_close_wakes_a_waiting_pop(channel):
    worker = attached(channel)
    try:
        waiting = Call(worker.pop_batch, 0, 0)
        time.sleep(0.05)
        channel.close()
        with pytest.raises(ChannelClosed):
            waiting.result()
    finally:
        worker.unmap()


def test_close_ends_the_batch_delay(channel):
    worker = attached(channel)
    try:
        channel.push_job(1, 0, 0, 1)
        delayed = Call(worker.pop_batch, 10, 60.0)
        time.sleep(0.05)
        channel.close()
        assert delayed.result() == [(1, 0, 0, 1)]
    finally:
        worker.unmap()


def test_a_full_job_queue_raises_arena_full_and_take_jobs_returns_the_untaken(channel):
    for job_id in range(QUEUE_CAPACITY):
        channel.push_job(job_id, 0, job_id, 1)
    with pytest.raises(ArenaFull, match=r"^job push failed \(status -2\)$"):
        channel.push_job(QUEUE_CAPACITY, 0, 0, 1)
    assert [j[0] for j in channel.pop_batch(2, 0)] == [0, 1]
    untaken = channel.take_jobs()
    assert untaken == [(i, 0, i, 1) for i in range(2, QUEUE_CAPACITY)]
    assert channel.take_jobs() == []
    # the ring goes round again
    for job_id in range(QUEUE_CAPACITY):
        channel.push_job(10_000 + job_id, 0, 0, 1)
    assert [j[0] for j in channel.pop_batch(0, 0)] == [10_000 + i for i in range(QUEUE_CAPACITY)]


def test_push_done_writes_the_eventfd_once_per_completion(channel):
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        dones = [(5, 4096, 100), (3, 8192, 0), (U64_MAX, 64, 1)]
        for done in dones:
            channel.push_done(*done, efd)
        assert os.eventfd_read(efd) == 3
        with pytest.raises(BlockingIOError):
            os.eventfd_read(efd)
        assert channel.pop_done() == [d + (0,) for d in dones]
        assert channel.pop_done() == []

        channel.push_done(6, 0, 0, -1)  # no eventfd: queued, nothing written
        with pytest.raises(BlockingIOError):
            os.eventfd_read(efd)
        os.eventfd_write(efd, 0xFFFFFFFFFFFFFFFE)  # a counter at its maximum: a wake-up is pending already
        channel.push_done(7, 0, 0, efd)
        assert channel.pop_done() == [(6, 0, 0, 0), (7, 0, 0, 0)]
    finally:
        os.close(efd)

    closed = os.open(os.devnull, os.O_RDONLY)
    os.close(closed)
    with pytest.raises(OSError) as info:
        channel.push_done(8, 0, 0, closed)
    assert info.value.errno == errno.EBADF
    assert channel.pop_done() == [(8, 0, 0, 0)]  # queued all the same


def test_a_full_done_queue_raises_arena_full(channel):
    for job_id in range(QUEUE_CAPACITY):
        channel.push_done(job_id, 0, 0, -1)
    with pytest.raises(ArenaFull, match=r"^done push failed \(status -2\)$"):
        channel.push_done(QUEUE_CAPACITY, 0, 0, -1)
    assert [d[0] for d in channel.pop_done()] == list(range(QUEUE_CAPACITY))
