"""The shared-memory channel of the C core (mindserve._transport.shm_channel) as its tests drive it: small
segments, a second mapping, calls made from a thread joined with a generous timeout (a hang fails the test instead
of stalling the run), child processes that share a channel, the channel's header as cffi sees it, and the model of
an arena's ring. No test asserts how long anything took."""

from __future__ import annotations

import select
import subprocess
import sys
import textwrap
import threading
from collections import deque

import pytest

from mindserve._native import ffi
from mindserve._transport.shm_channel import ShmChannel

U64_MAX = 2**64 - 1
ALIGN = 64
SEG = 1 << 20  # small segments: the tests are about the bookkeeping, not the bytes
HANG_S = 10.0  # a call that has not returned after this long is taken to hang


def align_up(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def attached(ch: ShmChannel) -> ShmChannel:
    """A second mapping of the channel (its own entry buffers, so that two threads never share them)."""
    return ShmChannel.attach(ch.fd)


class Call:
    """Runs ``fn`` in a thread; ``result()`` joins it (failing the test if it hangs) and returns or raises."""

    def __init__(self, fn, *args):
        self._outcome: list = []

        def run():
            try:
                self._outcome.append((True, fn(*args)))
            except BaseException as exc:  # handed to the test thread by result()
                self._outcome.append((False, exc))

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self):
        self.thread.join(HANG_S)
        assert not self.thread.is_alive(), "the call hangs"
        ok, value = self._outcome[0]
        if not ok:
            raise value
        return value


# ---------------------------------------------------------------------------------------------- the arena model


class RingModel:
    """What native/arena.c is specified to do, in Python: blocks carved in ring order (64-byte header, data
    64-byte aligned), never wrapping (the space left before the end is skipped as a free block), reclaimed
    oldest first once released, the ring starting again at the front whenever it empties."""

    def __init__(self, offset: int, capacity: int):
        self.offset, self.capacity = offset, capacity
        self.head = self.tail = 0
        self.blocks: deque = deque()  # [ring position, size, released]
        self.by_offset: dict = {}
        self.skipped: list = []  # data offsets of the skip blocks written so far

    def _reclaim(self) -> None:
        while self.blocks and self.blocks[0][2]:
            self.tail += self.blocks.popleft()[1]
        if self.tail == self.head:
            self.head = self.tail = 0

    def alloc(self, size: int):
        """The data offset, or "full" / "too big"."""
        self._reclaim()
        if size > self.capacity - ALIGN:
            return "too big"
        need = align_up(size + ALIGN)
        to_end = self.capacity - self.head % self.capacity
        skip = to_end if need > to_end else 0
        if self.head - self.tail + skip + need > self.capacity:
            return "full"
        if skip:
            self.skipped.append(self.offset + self.head % self.capacity + ALIGN)
            self.blocks.append([self.head, skip, True])
            self.head += skip
        block = [self.head, need, False]
        self.blocks.append(block)
        data = self.offset + self.head % self.capacity + ALIGN
        self.by_offset[data] = block
        self.head += need
        return data

    def release(self, data: int) -> None:
        self.by_offset.pop(data)[2] = True


def arena_model(ch: ShmChannel, which: int) -> RingModel:
    """The model of an arena of a fresh channel: its region is found by allocating one empty block (the first
    block of an empty arena starts at the front) and releasing it; the next allocation reclaims it."""
    first = ch.alloc(which, 0)
    ch.release(which, first)
    return RingModel(first - ALIGN, ch.max_message(which) + ALIGN)


def header(ch: ShmChannel):
    """The shared header of a channel, as cffi sees it (the fields a hostile worker would write)."""
    return ffi.cast("ms_channel *", ch._base)


# ------------------------------------------------------------------------------------------- child processes


def start_child(code: str, channel: ShmChannel, *fds: int) -> subprocess.Popen:
    """A Python child running ``code`` with the channel's fd (and ``fds``) in sys.argv[1:]."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(channel.fd), *map(str, fds)],
        pass_fds=(channel.fd, *fds),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def read_line(child: subprocess.Popen) -> bytes:
    assert child.stdout is not None, "start the child with stdout=PIPE"
    ready, _, _ = select.select([child.stdout], [], [], HANG_S)
    assert ready, "the child said nothing"
    return child.stdout.readline().strip()


def finish(child: subprocess.Popen) -> tuple:
    try:
        out, err = child.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        pytest.fail("the child did not exit")
    return child.returncode, out, err


def kill(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.kill()
    child.communicate()


ECHO_WORKER = """
    import sys, time
    from mindserve._transport.shm_channel import ShmChannel, REQUESTS, REPLIES, ArenaFull, ChannelClosed
    channel = ShmChannel.attach(int(sys.argv[1]))
    event_fd = int(sys.argv[2])
    view = channel.view
    while True:
        try:
            jobs = channel.pop_batch(8, 0.001)
        except ChannelClosed:
            break
        for job_id, offset, size, weight in jobs:
            assert channel.contains(REQUESTS, offset, size)
            request = bytes(view[offset:offset + size])
            reply = request[::-1] + request + job_id.to_bytes(8, "little") + bytes([weight])
            while True:
                try:
                    at = channel.alloc(REPLIES, len(reply))
                    break
                except ArenaFull:
                    time.sleep(0.0005)
            view[at:at + len(reply)] = reply
            channel.push_done(job_id, at, len(reply), event_fd)
"""
