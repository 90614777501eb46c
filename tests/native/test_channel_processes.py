"""Two real processes sharing one native channel: thousands of jobs round trip through a child worker, and a
process that dies holding the lock breaks the channel.

Every call that could block is made from a thread joined with a generous timeout (support/channel.py's Call),
so that a hang fails the test instead of stalling the run; no test asserts how long anything took."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mindserve._native import lib
from mindserve._transport.shm_channel import QUEUE_CAPACITY, REPLIES, REQUESTS, ArenaFull, ChannelBroken
from support.channel import ECHO_WORKER, HANG_S, Call, attached, finish, kill, read_line, start_child

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

# ------------------------------------------------------------------------------------------- two real processes


def test_two_processes_round_trip_thousands_of_jobs(channel):
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    child = start_child(ECHO_WORKER, channel, efd)
    rng = random.Random(99)
    view = channel.view
    biggest = channel.max_message(REQUESTS) // 8
    jobs: dict = {}  # id -> (request offset, request bytes, weight)
    answered: set = set()

    def drain(wait: bool) -> None:
        if wait:
            ready, _, _ = select.select([efd], [], [], HANG_S)
            assert ready or child.poll() is not None, "no completion"
            assert child.poll() is None, finish(child)
        try:
            os.eventfd_read(efd)
        except BlockingIOError:
            pass
        for job_id, offset, size, weight in channel.pop_done():
            assert weight == 0
            assert job_id in jobs and job_id not in answered
            request_offset, request, job_weight = jobs.pop(job_id)
            assert channel.contains(REPLIES, offset, size)
            assert bytes(view[offset : offset + size]) == (
                request[::-1] + request + job_id.to_bytes(8, "little") + bytes([job_weight])
            )
            answered.add(job_id)
            channel.release(REPLIES, offset)
            channel.release(REQUESTS, request_offset)

    try:
        total = 2000
        for n in range(total):
            job_id = 1_000_000 + n * 3
            size = rng.choice([0, 1, 64, rng.randrange(1, 512), rng.randrange(1, biggest)])
            request = bytes(rng.getrandbits(8) for _ in range(min(size, 16))) * (size // 16 + 1)
            request = request[:size]
            weight = rng.randrange(1, 4)
            while len(jobs) >= QUEUE_CAPACITY:  # as the master does: the done queue can take every reply
                drain(wait=True)
            while True:
                try:
                    offset = channel.alloc(REQUESTS, size)
                    break
                except ArenaFull:
                    drain(wait=True)
            view[offset : offset + size] = request
            jobs[job_id] = (offset, request, weight)
            while True:
                try:
                    channel.push_job(job_id, offset, size, weight)
                    break
                except ArenaFull:  # the job queue is full
                    drain(wait=True)
            drain(wait=False)
        while jobs:
            drain(wait=True)
        assert len(answered) == total
        channel.close()
        code, out, err = finish(child)
        assert (code, out, err) == (0, b"", b"")
    finally:
        kill(child)
        os.close(efd)


LOCK_AND_DIE = """
    import os, sys
    from mindserve._native import lib
    from mindserve._transport.shm_channel import ShmChannel
    channel = ShmChannel.attach(int(sys.argv[1]))
    assert lib.ms_channel_lock(channel.layout, -1) == 0
    print("locked", flush=True)
    sys.stdin.readline()  # the test says when
    os._exit(3)  # without unlocking
"""


@pytest.mark.parametrize("death", ["sigkill", "exit"])
def test_a_process_dying_with_the_lock_breaks_the_channel(channel, death):
    waiter = attached(channel)  # waits in pop_batch meanwhile
    pusher = attached(channel)
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LOCK_AND_DIE), str(channel.fd)],
        pass_fds=(channel.fd,),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        waiting = Call(waiter.pop_batch, 0, 0)
        assert read_line(child) == b"locked"
        blocked = Call(pusher.push_job, 1, 0, 0, 1)  # blocks on the lock the child holds
        time.sleep(0.05)
        assert blocked.thread.is_alive()
        if death == "sigkill":
            child.kill()
        else:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.flush()
        assert child.wait(HANG_S) == (-signal.SIGKILL if death == "sigkill" else 3)

        with pytest.raises(ChannelBroken, match=r"^job push failed \(status -5\)$"):
            blocked.result()
        with pytest.raises(ChannelBroken):
            waiting.result()  # woken once the death was noticed
        for call in (
            lambda: channel.push_job(2, 0, 0, 1),
            channel.pop_done,
            channel.take_jobs,
            lambda: channel.pop_batch(0, 0),
            lambda: channel.push_done(1, 0, 0, -1),
            channel.close,
        ):
            with pytest.raises(ChannelBroken):
                Call(call).result()
        assert lib.ms_channel_lock(channel.layout, 0) == lib.MS_EBROKEN
        # a fresh mapping finds the channel intact but broken
        again = attached(channel)
        with pytest.raises(ChannelBroken):
            Call(again.take_jobs).result()
        again.unmap()
    finally:
        kill(child)
        waiter.unmap()
        pusher.unmap()


def test_a_process_dying_with_the_lock_while_nobody_waits(channel):
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LOCK_AND_DIE), str(channel.fd)],
        pass_fds=(channel.fd,),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert read_line(child) == b"locked"
        child.kill()
        child.wait(HANG_S)
        with pytest.raises(ChannelBroken):
            Call(channel.pop_done).result()  # the first to lock finds the owner dead
        with pytest.raises(ChannelBroken):
            Call(channel.take_jobs).result()  # and the channel stays broken
        with pytest.raises(ChannelBroken):
            Call(channel.push_job, 1, 0, 0, 1).result()
    finally:
        kill(child)
