"""The native channel core (native/segment.c, arena.c, channel.c) through cffi and through its Python face
ShmChannel: segments that leave no name behind, the ring allocator of the two message arenas, the job and done
queues with batching deadlines, and two real processes sharing one channel, including processes that die holding
the lock or while waiting.

Every call that could block is made from a thread joined with a generous timeout, so that a hang fails the test
instead of stalling the run; no test asserts how long anything took."""
from __future__ import annotations

import ast
import errno
import fcntl
import glob
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import deque

import pytest

from mindserve._native import ffi, lib
from mindserve._transport import shm_channel
from mindserve._transport.shm_channel import (QUEUE_CAPACITY, REPLIES, REQUESTS, ArenaFull, ChannelBroken,
                                              ChannelClosed, MessageTooBig, ShmChannel)

U64_MAX = 2 ** 64 - 1
ALIGN = 64
SEG = 1 << 20  # small segments: the tests are about the bookkeeping, not the bytes
HANG_S = 10.0  # a call that has not returned after this long is taken to hang
ENTRY_SIZE = ffi.sizeof("ms_entry")


def align_up(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@pytest.fixture
def channel():
    ch = ShmChannel.create(SEG, "the test")
    yield ch
    ch.close_fd()
    ch.unmap()


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


def try_alloc(ch: ShmChannel, which: int, size: int):
    try:
        return ch.alloc(which, size)
    except ArenaFull:
        return "full"
    except MessageTooBig:
        return "too big"


def arena_model(ch: ShmChannel, which: int) -> RingModel:
    """The model of an arena of a fresh channel: its region is found by allocating one empty block (the first
    block of an empty arena starts at the front) and releasing it; the next allocation reclaims it."""
    first = ch.alloc(which, 0)
    ch.release(which, first)
    return RingModel(first - ALIGN, ch.max_message(which) + ALIGN)


def arena_bytes(ch: ShmChannel, model: RingModel) -> bytes:
    return bytes(ch.view[model.offset:model.offset + model.capacity])


# ------------------------------------------------------------------------------------------------------ segment

def test_create_leaves_no_name_in_dev_shm_and_is_owner_only(monkeypatch):
    token = "5e9" * 10 + "ab"
    monkeypatch.setattr(shm_channel.secrets, "token_hex", lambda nbytes: token)
    name = f"/dev/shm/mindserve-{token}"
    old_umask = os.umask(0o777)  # the mode must not depend on the umask
    try:
        first = ShmChannel.create(SEG, "the test")
    finally:
        os.umask(old_umask)
    try:
        assert not os.path.exists(name)
        assert glob.glob(f"/dev/shm/mindserve-{token}*") == []
        st = os.fstat(first.fd)
        assert st.st_mode & 0o777 == 0o600
        assert st.st_size == SEG
        assert st.st_blocks * 512 >= SEG  # every page reserved up front
        assert fcntl.fcntl(first.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert len(first.view) == SEG

        # the same random name again: the first creation left nothing to collide with, and the two segments
        # are distinct memory
        second = ShmChannel.create(SEG, "the test")
        try:
            assert not os.path.exists(name)
            assert not os.path.samestat(os.fstat(first.fd), os.fstat(second.fd))
            first.view[SEG - 4:] = b"abcd"
            assert bytes(second.view[SEG - 4:]) == b"\0\0\0\0"
            second.view[SEG - 8:SEG - 4] = b"wxyz"
            assert bytes(first.view[SEG - 8:]) == b"\0\0\0\0abcd"
        finally:
            second.close_fd()
            second.unmap()

        first.close_fd()
        assert first.fd == -1
        first.view[SEG - 1] = 7  # the mapping outlives the descriptor
        assert first.view[SEG - 1] == 7
    finally:
        first.close_fd()
        first.unmap()


def test_segment_create_with_the_same_name_twice_gives_two_segments():
    name = f"/mindserve-test-{os.getpid()}-twice".encode()
    fds = [ffi.new("int *"), ffi.new("int *")]
    assert lib.ms_segment_create(name, 8192, fds[0]) == lib.MS_OK
    try:
        assert lib.ms_segment_create(name, 8192, fds[1]) == lib.MS_OK
        try:
            assert not os.path.exists("/dev/shm" + name.decode())
            os.pwrite(fds[0][0], b"first", 0)
            assert os.pread(fds[1][0], 5, 0) == b"\0" * 5
            size = ffi.new("uint64_t *")
            assert lib.ms_segment_size(fds[1][0], size) == lib.MS_OK
            assert size[0] == 8192
        finally:
            os.close(fds[1][0])
    finally:
        os.close(fds[0][0])


def test_segment_create_refuses_an_existing_name_and_leaves_it_alone():
    name = f"/mindserve-test-{os.getpid()}-exists"
    path = "/dev/shm" + name
    with open(path, "xb") as f:
        f.write(b"someone else's")
    try:
        fd = ffi.new("int *", -5)
        assert lib.ms_segment_create(name.encode(), 4096, fd) == lib.MS_ESYS
        assert ffi.errno == errno.EEXIST
        assert fd[0] == -5
        with open(path, "rb") as f:
            assert f.read() == b"someone else's"
    finally:
        os.unlink(path)


def test_segment_larger_than_dev_shm_fails_with_enospc_and_leaves_nothing(monkeypatch):
    st = os.statvfs("/dev/shm")
    if not st.f_blocks:
        pytest.skip("/dev/shm has no size limit here")
    too_big = st.f_blocks * st.f_frsize + (1 << 20)
    name = f"/mindserve-test-{os.getpid()}-enospc"
    fd = ffi.new("int *", -5)
    assert lib.ms_segment_create(name.encode(), too_big, fd) == lib.MS_ESYS
    assert ffi.errno == errno.ENOSPC
    assert fd[0] == -5
    assert not os.path.exists("/dev/shm" + name)

    # ShmChannel.create turns the kernel's ENOSPC (past its own free-space check) into the same advice
    monkeypatch.setattr(shm_channel, "shm_free_bytes", lambda: None)
    with pytest.raises(RuntimeError) as info:
        ShmChannel.create(too_big, "worker of big v1")
    assert str(info.value) == (
        f"cannot reserve {too_big >> 20} MB of shared memory for worker of big v1: /dev/shm has not enough room; "
        f"lower shm_size_mb in ServableStartConfig or give the machine (or container: --shm-size) more shared "
        f"memory")


def test_create_refuses_a_size_larger_than_the_free_shared_memory(monkeypatch):
    monkeypatch.setattr(shm_channel, "shm_free_bytes", lambda: 3 << 20)
    created = []

    class RecordingLib:
        def __getattr__(self, name):
            return getattr(lib, name)

        @staticmethod
        def ms_segment_create(name, size, fd):
            created.append(name)
            return lib.ms_segment_create(name, size, fd)

    monkeypatch.setattr(shm_channel, "lib", RecordingLib())
    with pytest.raises(RuntimeError) as info:
        ShmChannel.create(8 << 20, "worker of add v1")
    message = str(info.value)
    assert message == ("cannot reserve 8 MB of shared memory for worker of add v1: /dev/shm has 3 MB free; lower "
                       "shm_size_mb in ServableStartConfig or give the machine (or container: --shm-size) more "
                       "shared memory")
    assert "worker of add v1" in message and "shm_size_mb" in message
    assert created == []  # refused before anything was made


def test_create_reports_other_system_errors_naming_the_owner(monkeypatch):
    class FailingLib:
        def __getattr__(self, name):
            return getattr(lib, name)

        @staticmethod
        def ms_segment_create(name, size, fd):
            ffi.errno = errno.EACCES
            return lib.MS_ESYS

    monkeypatch.setattr(shm_channel, "lib", FailingLib())
    with pytest.raises(RuntimeError) as info:
        ShmChannel.create(SEG, "worker of add v1")
    assert str(info.value) == f"cannot create the shared memory of worker of add v1: {os.strerror(errno.EACCES)}"


# --------------------------------------------------------------------------------------- channel set-up and check

def check(base, size: int) -> int:
    """ms_channel_attach's verdict on the segment at ``base``, into a scratch view."""
    return lib.ms_channel_attach(ffi.new("ms_view *"), base, size)


def layout_of(view) -> tuple:
    return (view.size, view.jobs.offset, view.jobs.capacity, view.done.offset, view.done.capacity,
            view.requests.offset, view.requests.capacity, view.requests.head, view.requests.tail,
            view.replies.offset, view.replies.capacity, view.replies.head, view.replies.tail)


def test_channel_init_refuses_a_small_segment_and_bad_queue_capacities():
    min_size = lib.ms_channel_min_size(QUEUE_CAPACITY)
    buf = ffi.new("char[]", min_size + 4096)
    view = ffi.new("ms_view *")
    assert lib.ms_channel_init(view, buf, min_size - 1, QUEUE_CAPACITY) == lib.MS_EINVAL
    assert lib.ms_channel_init(view, buf, min_size + 4096, 0) == lib.MS_EINVAL
    assert lib.ms_channel_init(view, buf, min_size + 4096, (1 << 20) + 1) == lib.MS_EINVAL
    assert lib.ms_channel_init(view, buf, min_size + 4096, U64_MAX) == lib.MS_EINVAL
    assert bytes(ffi.buffer(buf)) == bytes(min_size + 4096)  # a refused init writes nothing
    assert bytes(ffi.buffer(view)) == bytes(ffi.sizeof("ms_view"))  # the view included
    assert check(buf, min_size + 4096) == lib.MS_ECORRUPT

    assert lib.ms_channel_init(view, buf, min_size, QUEUE_CAPACITY) == lib.MS_OK
    assert check(buf, min_size) == lib.MS_OK
    assert check(buf, min_size + 64) == lib.MS_ECORRUPT  # not the size it was made for
    assert check(buf, min_size - 64) == lib.MS_ECORRUPT
    for which in (REQUESTS, REPLIES):
        assert lib.ms_max_alloc(view, which) >= 4096 - ALIGN

    # the worker's attach copies exactly the layout the master computed; a refused attach leaves its view alone
    worker = ffi.new("ms_view *")
    assert lib.ms_channel_attach(worker, buf, min_size) == lib.MS_OK
    assert worker.base == view.base == buf
    assert layout_of(worker) == layout_of(view)
    assert view.jobs.capacity == view.done.capacity == QUEUE_CAPACITY
    assert view.requests.offset + view.requests.capacity == view.replies.offset
    assert view.replies.offset + view.replies.capacity <= min_size
    before = bytes(ffi.buffer(worker))
    assert lib.ms_channel_attach(worker, buf, min_size + 64) == lib.MS_ECORRUPT
    assert bytes(ffi.buffer(worker)) == before


def test_channel_with_a_queue_of_one_entry():
    size = lib.ms_channel_min_size(1)
    buf = ffi.new("char[]", size)
    view = ffi.new("ms_view *")
    assert lib.ms_channel_init(view, buf, size, 1) == lib.MS_OK
    ch = ShmChannel(-1, buf, size, view)  # over heap memory: never unmapped
    ch.push_job(1, 0, 0, 1)
    with pytest.raises(ArenaFull):
        ch.push_job(2, 0, 0, 1)
    assert ch.pop_batch(0, 0) == [(1, 0, 0, 1)]
    ch.push_job(3, 0, 0, 1)  # the ring index wraps
    assert ch.take_jobs() == [(3, 0, 0, 1)]


def test_check_refuses_a_too_small_size_without_reading():
    buf = ffi.new("char[]", 8)
    assert check(buf, 8) == lib.MS_ECORRUPT
    assert check(buf, 0) == lib.MS_ECORRUPT


def header_fields(ch: ShmChannel) -> dict:
    """Word indexes (uint64) of the header's layout fields, found by their values: the arenas' region (known
    from the allocator) and the queues in front of them."""
    words = ffi.cast("uint64_t *", ch._base)
    n_words = 64  # the header is far smaller than 512 bytes
    values = [words[i] for i in range(n_words)]

    def find_pair(first: int, second: int) -> int:
        hits = [i for i in range(n_words - 1) if values[i] == first and values[i + 1] == second]
        assert len(hits) == 1, (first, second, hits)
        return hits[0]

    requests = arena_model(ch, REQUESTS)
    replies = arena_model(ch, REPLIES)
    queue_bytes = align_up(QUEUE_CAPACITY * ENTRY_SIZE)
    jobs_offset = requests.offset - 2 * queue_bytes
    return {"magic": 0, "size": 1,
            "jobs": find_pair(jobs_offset, QUEUE_CAPACITY),
            "done": find_pair(jobs_offset + queue_bytes, QUEUE_CAPACITY),
            "requests": find_pair(requests.offset, requests.capacity),
            "replies": find_pair(replies.offset, replies.capacity)}


def test_check_refuses_headers_that_point_outside_the_segment(channel):
    fields = header_fields(channel)
    assert fields["done"] > fields["jobs"] and fields["replies"] > fields["requests"]
    words = ffi.cast("uint64_t *", channel._base)
    size = channel.size
    bad = [(fields["magic"], words[0] ^ 1), (fields["size"], size + 64), (fields["size"], size - 64)]
    for queue in ("jobs", "done"):
        at = fields[queue]
        bad += [(at, 0),  # inside the header
                (at, size), (at, size - ENTRY_SIZE), (at, U64_MAX - 63),  # entries past the end
                (at + 1, 0), (at + 1, 2 ** 62),  # no entries; capacity * entry size overflows
                (at + 1, (size - words[at]) // ENTRY_SIZE + 1)]
    for arena in ("requests", "replies"):
        at = fields[arena]
        bad += [(at, words[at] + 8),  # misaligned
                (at, size), (at, size - 64), (at, U64_MAX - 63),
                (at + 1, 0), (at + 1, ALIGN),  # less than two headers
                (at + 1, words[at + 1] + 8),  # misaligned
                (at + 1, size - words[at] + 64), (at + 1, U64_MAX - 63)]
    for index, value in bad:
        saved = words[index]
        words[index] = value
        try:
            assert check(channel._base, size) == lib.MS_ECORRUPT, (index, value)
        finally:
            words[index] = saved
        assert check(channel._base, size) == lib.MS_OK

    # the edge that still fits is accepted: the requests arena grown up to the end of the segment
    at = fields["requests"]
    saved = words[at + 1]
    words[at + 1] = (size - words[at]) // ALIGN * ALIGN
    assert check(channel._base, size) == lib.MS_OK
    words[at + 1] = saved


def maps_of(marker: str) -> list:
    with open("/proc/self/maps") as f:
        return [line for line in f if marker in line]


def test_attach_refuses_segments_that_are_not_this_channel(channel):
    other = attached(channel)
    try:
        assert other.max_message(REQUESTS) == channel.max_message(REQUESTS)
    finally:
        other.unmap()

    os.ftruncate(channel.fd, SEG + 4096)  # a bigger segment than the header says
    with pytest.raises(ChannelBroken, match=r"^channel check failed \(status -7\)$"):
        ShmChannel.attach(channel.fd)
    os.ftruncate(channel.fd, SEG - 4096)  # a smaller one (its end is not even mapped)
    with pytest.raises(ChannelBroken):
        ShmChannel.attach(channel.fd)
    os.ftruncate(channel.fd, SEG)
    attached(channel).unmap()

    magic = bytes(channel.view[:8])
    channel.view[0] ^= 0xFF
    with pytest.raises(ChannelBroken):
        ShmChannel.attach(channel.fd)
    channel.view[:8] = magic
    attached(channel).unmap()

    marker = f"ms-test-attach-{os.getpid()}"
    for size in (SEG, 8):  # zeros; then less than a header
        fd = os.memfd_create(marker)
        try:
            os.ftruncate(fd, size)
            with pytest.raises(ChannelBroken):
                ShmChannel.attach(fd)
            assert maps_of(marker) == []  # the refused mapping is ended
            os.fstat(fd)  # and the descriptor stays the caller's
        finally:
            os.close(fd)


# -------------------------------------------------------------------------------------------------------- arenas

@pytest.mark.parametrize("which", [REQUESTS, REPLIES])
def test_blocks_are_aligned_and_inside_their_arena(channel, which):
    model = arena_model(channel, which)
    other = REPLIES if which == REQUESTS else REQUESTS
    sizes = [0, 1, 63, 64, 65, 127, 128, 1000, 4096, 5]
    offsets = []
    for size in sizes:
        offset = channel.alloc(which, size)
        assert offset == model.alloc(size)
        assert offset % ALIGN == 0
        assert model.offset + ALIGN <= offset and offset + size <= model.offset + model.capacity
        assert channel.contains(which, offset, size)
        assert not channel.contains(other, offset, size)
        offsets.append(offset)
    spans = sorted(zip(offsets, sizes))
    for (a, size_a), (b, _) in zip(spans, spans[1:]):
        assert a + size_a + ALIGN <= b  # a header of its own in front of every block
    for offset in offsets:
        channel.release(which, offset)


@pytest.mark.parametrize("which", [REQUESTS, REPLIES])
def test_arena_fills_to_capacity_then_is_full_until_the_oldest_is_released(channel, which):
    model = arena_model(channel, which)
    need = align_up(100 + ALIGN)
    count = model.capacity // need
    offsets = [channel.alloc(which, 100) for _ in range(count)]
    assert offsets == [model.offset + ALIGN + i * need for i in range(count)]
    with pytest.raises(ArenaFull):
        channel.alloc(which, 100)
    rest = model.capacity - count * need  # less than one more such block
    if rest:
        last = channel.alloc(which, rest - ALIGN)  # exactly what is left, header included
        assert last == model.offset + count * need + ALIGN
        assert channel.contains(which, last, rest - ALIGN) and not channel.contains(which, last, rest - ALIGN + 1)
    with pytest.raises(ArenaFull):
        channel.alloc(which, 0)
    assert lib.ms_alloc(channel.layout, which, 0, ffi.new("uint64_t *")) == lib.MS_EFULL

    channel.release(which, offsets[0])
    assert channel.alloc(which, 100) == offsets[0]  # back at the front of the ring
    with pytest.raises(ArenaFull):
        channel.alloc(which, 0)


@pytest.mark.parametrize("which", [REQUESTS, REPLIES])
def test_out_of_order_release_is_reclaimed_once_the_older_blocks_are(channel, which):
    model = arena_model(channel, which)
    need = align_up(100 + ALIGN)
    count = model.capacity // need
    offsets = [channel.alloc(which, 100) for _ in range(count)]
    for offset in offsets:
        model.alloc(100)

    for offset in (offsets[2], offsets[1]):
        channel.release(which, offset)
        model.release(offset)
        with pytest.raises(ArenaFull):
            channel.alloc(which, 100)
        assert model.alloc(100) == "full"

    channel.release(which, offsets[0])
    model.release(offsets[0])
    again = [channel.alloc(which, 100) for _ in range(3)]
    assert again == offsets[:3] == [model.alloc(100) for _ in range(3)]
    with pytest.raises(ArenaFull):
        channel.alloc(which, 100)


def pattern(tag: int, size: int) -> bytes:
    return (tag.to_bytes(8, "little") * (size // 8 + 1))[:size]


@pytest.mark.parametrize("which", [REQUESTS, REPLIES])
def test_wrap_around_keeps_every_block_intact(channel, which):
    rng = random.Random(1234 + which)
    model = arena_model(channel, which)
    view = channel.view
    live: dict = {}  # offset -> (tag, size)
    order: deque = deque()  # offsets in allocation order
    wraps = fulls = 0
    last = -1
    for tag in range(2500):
        size = rng.choice([0, 1, 63, 64, 65, rng.randrange(1, 2000), rng.randrange(1, model.capacity // 6)])
        while True:
            expected = model.alloc(size)
            got = try_alloc(channel, which, size)
            assert got == expected, (tag, size)
            if got != "full":
                break
            fulls += 1
            # release the oldest, or sometimes a younger block first (reclaimed later), and try again
            victim = order[0] if rng.random() < 0.7 or len(order) < 3 else order[rng.randrange(1, 3)]
            vtag, vsize = live.pop(victim)
            assert bytes(view[victim:victim + vsize]) == pattern(vtag, vsize), "a block was overwritten"
            channel.release(which, victim)
            model.release(victim)
            order.remove(victim)
        assert got % ALIGN == 0 and channel.contains(which, got, size)
        for offset, (_, other_size) in live.items():  # no overlap with a live block, headers included
            assert got + size <= offset - ALIGN or offset + other_size <= got - ALIGN
        wraps += got < last
        last = got
        view[got:got + size] = pattern(tag, size)
        live[got] = (tag, size)
        order.append(got)
    for offset in list(order):
        vtag, vsize = live.pop(offset)
        assert bytes(view[offset:offset + vsize]) == pattern(vtag, vsize)
        channel.release(which, offset)
    assert wraps > 10 and fulls > 100  # the loop did go round the ring, and through full arenas
    assert model.skipped  # and skipped ends of the ring
    for data in model.skipped:
        assert lib.ms_release(channel.layout, which, data) == lib.MS_EINVAL  # a skip block is no live block
    # everything released: the whole arena is one block again
    assert channel.alloc(which, channel.max_message(which)) == model.offset + ALIGN


@pytest.mark.parametrize("which", [REQUESTS, REPLIES])
def test_a_message_larger_than_the_arena_is_too_big(channel, which):
    model = arena_model(channel, which)
    biggest = channel.max_message(which)
    assert biggest == model.capacity - ALIGN
    out = ffi.new("uint64_t *", 12345)
    for size in (biggest + 1, model.capacity, U64_MAX, U64_MAX - 63, 2 ** 63):
        assert lib.ms_alloc(channel.layout, which, size, out) == lib.MS_ETOOBIG
        assert out[0] == 12345
    with pytest.raises(MessageTooBig):
        channel.alloc(which, biggest + 1)

    whole = channel.alloc(which, biggest)
    assert whole == model.offset + ALIGN
    assert channel.contains(which, whole, biggest)
    with pytest.raises(ArenaFull):
        channel.alloc(which, 0)
    with pytest.raises(MessageTooBig):  # too big stays too big, even while the arena is full
        channel.alloc(which, biggest + 1)
    channel.release(which, whole)
    assert channel.alloc(which, biggest) == whole


def test_releasing_anything_but_a_live_block_is_refused_and_writes_nothing(channel):
    requests = arena_model(channel, REQUESTS)
    replies = arena_model(channel, REPLIES)
    a = channel.alloc(REQUESTS, 300)
    b = channel.alloc(REQUESTS, 10)
    keep = channel.alloc(REQUESTS, 0)
    channel.release(REQUESTS, b)  # released, not reclaimed: `a` is live in front of it
    reply = channel.alloc(REPLIES, 64)
    channel.view[a:a + 300] = b"\x01" * 300
    snapshot = arena_bytes(channel, requests), arena_bytes(channel, replies), bytes(channel.view[:4096])

    bad = [a + 1, a + 8, a + 32, a + 63, a - ALIGN, a + ALIGN, a + 128,  # misaligned, or not a block's data
           b,  # released already
           0, 8, ALIGN, requests.offset, requests.offset + requests.capacity,
           requests.offset + requests.capacity + ALIGN, U64_MAX, U64_MAX - 63, 2 ** 63, 2 ** 32 * ALIGN,
           reply]  # a live block, of the other arena
    for offset in bad:
        assert lib.ms_release(channel.layout, REQUESTS, offset) == lib.MS_EINVAL, offset
    for offset in (a, keep, 0, U64_MAX, replies.offset + replies.capacity):
        assert lib.ms_release(channel.layout, REPLIES, offset) == lib.MS_EINVAL, offset
    with pytest.raises(ValueError, match=r"^arena release failed \(status -1\)$"):
        channel.release(REQUESTS, b)
    assert (arena_bytes(channel, requests), arena_bytes(channel, replies), bytes(channel.view[:4096])) == snapshot

    # the live blocks are still live, and each can be released exactly once
    for which, offset in ((REQUESTS, a), (REQUESTS, keep), (REPLIES, reply)):
        assert lib.ms_release(channel.layout, which, offset) == lib.MS_OK
        assert lib.ms_release(channel.layout, which, offset) == lib.MS_EINVAL


def test_a_block_released_again_after_it_was_reclaimed_is_refused(channel):
    first = channel.alloc(REQUESTS, 100)
    second = channel.alloc(REQUESTS, 100)
    channel.release(REQUESTS, first)
    third = channel.alloc(REQUESTS, 100)  # reclaims `first`; `second` is live, so the ring does not restart
    assert third not in (first, second)
    assert lib.ms_release(channel.layout, REQUESTS, first) == lib.MS_EINVAL
    channel.release(REQUESTS, second)
    channel.release(REQUESTS, third)


def test_contains_never_overflows(channel):
    model = arena_model(channel, REQUESTS)
    start, end = model.offset + ALIGN, model.offset + model.capacity
    inside = [(start, model.capacity - ALIGN), (start, 0), (end, 0), (end - 1, 1), (start + 64, 100)]
    outside = [(start - 1, 0), (model.offset, 0), (start, model.capacity - ALIGN + 1), (end, 1), (end + 1, 0),
               (U64_MAX, 0), (U64_MAX, 1), (U64_MAX, U64_MAX), (start, U64_MAX), (start, U64_MAX - start + 1),
               (U64_MAX - 63, 64), (2 ** 63, 2 ** 63), (end - 1, U64_MAX), (0, 0), (0, end)]
    for offset, size in inside:
        assert lib.ms_contains(channel.layout, REQUESTS, offset, size) == 1, (offset, size)
    for offset, size in outside:
        assert lib.ms_contains(channel.layout, REQUESTS, offset, size) == 0, (offset, size)
        assert channel.contains(REQUESTS, offset, size) is False


def test_an_unknown_arena_is_refused(channel):
    out = ffi.new("uint64_t *", 7)
    for which in (2, -1, 1000):
        assert lib.ms_alloc(channel.layout, which, 8, out) == lib.MS_EINVAL
        assert out[0] == 7
        assert lib.ms_release(channel.layout, which, 4096) == lib.MS_EINVAL
        assert lib.ms_contains(channel.layout, which, 4096, 0) == 0
        assert lib.ms_max_alloc(channel.layout, which) == 0


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
    call = Call(lambda: (lib.ms_pop_batch(base, 100, 60 * 10 ** 9, out, 2, count), count[0], out[0].id))
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


# ------------------------------------------------------------------------------------------- two real processes

def start_child(code: str, channel: ShmChannel, *fds: int) -> subprocess.Popen:
    """A Python child running ``code`` with the channel's fd (and ``fds``) in sys.argv[1:]."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(channel.fd), *map(str, fds)],
                            pass_fds=(channel.fd, *fds), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_line(child: subprocess.Popen) -> bytes:
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
            assert bytes(view[offset:offset + size]) == (request[::-1] + request + job_id.to_bytes(8, "little")
                                                         + bytes([job_weight]))
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
            view[offset:offset + size] = request
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
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LOCK_AND_DIE), str(channel.fd)],
                             pass_fds=(channel.fd,), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        waiting = Call(waiter.pop_batch, 0, 0)
        assert read_line(child) == b"locked"
        blocked = Call(pusher.push_job, 1, 0, 0, 1)  # blocks on the lock the child holds
        time.sleep(0.05)
        assert blocked.thread.is_alive()
        if death == "sigkill":
            child.kill()
        else:
            child.stdin.write(b"go\n")
            child.stdin.flush()
        assert child.wait(HANG_S) == (-signal.SIGKILL if death == "sigkill" else 3)

        with pytest.raises(ChannelBroken, match=r"^job push failed \(status -5\)$"):
            blocked.result()
        with pytest.raises(ChannelBroken):
            waiting.result()  # woken once the death was noticed
        for call in (lambda: channel.push_job(2, 0, 0, 1), channel.pop_done, channel.take_jobs,
                     lambda: channel.pop_batch(0, 0), lambda: channel.push_done(1, 0, 0, -1), channel.close):
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
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LOCK_AND_DIE), str(channel.fd)],
                             pass_fds=(channel.fd,), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
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


# ---------------------------------------------------------------------------------------- the lock (a futex word)
#
# native/channel.h, "The lock": the word is 0 or LOCK_WAITERS | the owner's pid. A waiter checks the owner's
# life every 10 ms; the master's calls wait at most MS_MASTER_LOCK_WAIT_NS (then status -8, MS_ETIMEDOUT), the
# worker's without bound. No test here asserts how long a wait took: only which status ended it.

LOCK_WAITERS = 1 << 31
BROKEN = r"status -5\)$"  # the owner was found dead (or the word names no process), or the channel was broken
TIMED_OUT = r"status -8\)$"  # a live owner kept the lock past the master's bound


def master_calls(ch: ShmChannel) -> list:
    """Every call of the master's that takes the lock (set_backlog raises nothing: its status is returned)."""
    return [lambda: ch.push_job(1, 0, 0, 1), ch.pop_done, ch.take_jobs, ch.close,
            lambda: _check_status(lib.ms_channel_set_backlog(ch.layout, 1))]


def _check_status(status: int) -> None:
    shm_channel._check(status, "backlog")


def dead_pid() -> int:
    """A pid no process can have: above the kernel's pid_max (and inside the lock word's 30 pid bits)."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    assert pid_max + 1 < 2 ** 30
    return pid_max + 1


def test_the_lock_word_holds_the_owners_pid_and_is_free_between_calls(channel):
    h = header(channel)
    # no mutex, no pointer: one 32-bit word after jobs_seq, right in front of the queues
    assert (ffi.offsetof("ms_channel", "lock"), ffi.offsetof("ms_channel", "jobs")) == (36, 40)
    assert h.lock == 0
    assert lib.ms_channel_lock(channel.layout, -1) == lib.MS_OK
    assert h.lock == os.getpid()  # uncontended: no waiters bit
    # a second taker (another thread of this process) waits, then gives up at its bound and breaks the channel
    assert lib.ms_channel_lock(channel.layout, 20_000_000) == lib.MS_ETIMEDOUT
    assert h.broken == 1
    lib.ms_channel_unlock(channel.layout)
    assert h.lock == 0
    h.broken = 0  # set right again by hand: the lock itself is fine
    for n in range(3):
        channel.push_job(n, 0, 0, 1)
        assert h.lock == 0
    assert [j[0] for j in channel.take_jobs()] == [0, 1, 2]
    assert lib.MS_MASTER_LOCK_WAIT_NS <= 1_000_000_000  # the master's bound: at most a second


HOLD_LOCK = """
    import os, sys
    from mindserve._native import lib
    from mindserve._transport.shm_channel import ShmChannel
    channel = ShmChannel.attach(int(sys.argv[1]))
    assert lib.ms_channel_lock(channel.layout, -1) == 0
    print("locked", flush=True)
    if sys.stdin.readline().strip() == "unlock":  # end of input: keep the lock until killed
        lib.ms_channel_unlock(channel.layout)
        print("unlocked", flush=True)
    sys.stdin.readline()
"""


def hold_lock(channel: ShmChannel) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD_LOCK), str(channel.fd)],
                             pass_fds=(channel.fd,), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    assert read_line(child) == b"locked"
    return child


def tell(child: subprocess.Popen, line: bytes) -> None:
    child.stdin.write(line + b"\n")
    child.stdin.flush()


def wait_for_word(h, value: int) -> None:
    deadline = time.monotonic() + HANG_S
    while h.lock != value:
        assert time.monotonic() < deadline, (hex(h.lock), hex(value))
        time.sleep(0.001)


def test_a_push_waits_for_a_lock_another_process_holds_then_succeeds(channel):
    worker = attached(channel)
    child = hold_lock(channel)
    try:
        h = header(channel)
        assert h.lock == child.pid
        blocked = Call(channel.push_job, 5, 0, 0, 1)
        wait_for_word(h, child.pid | LOCK_WAITERS)  # the waiter flagged itself and sleeps
        assert blocked.thread.is_alive()
        tell(child, b"unlock")  # well within the master's bound
        assert read_line(child) == b"unlocked"
        assert blocked.result() is None
        assert h.lock == 0 and h.broken == 0
        assert Call(worker.pop_batch, 0, 0).result() == [(5, 0, 0, 1)]
        tell(child, b"")
        assert finish(child)[0] == 0
    finally:
        kill(child)
        worker.unmap()


CONTEND = """
    import sys
    from mindserve._transport.shm_channel import ShmChannel
    channel = ShmChannel.attach(int(sys.argv[1]))
    print("ready", flush=True)
    sys.stdin.readline()
    for n in range(int(sys.argv[2])):
        channel.push_done(n, 0, 0, -1)
        if n % 64 == 63:
            channel.pop_batch(0, 0)  # the master pushes one job per 64 completions it took
"""


def test_two_processes_hammering_the_lock_lose_nothing(channel):
    """Contention both ways: the child's completions and the master's pops and pushes all go through."""
    total = 20_000
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CONTEND), str(channel.fd), str(total)],
                             pass_fds=(channel.fd,), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        assert read_line(child) == b"ready"
        tell(child, b"go")
        seen = []
        deadline = time.monotonic() + 60
        while len(seen) < total:
            assert time.monotonic() < deadline and child.poll() in (None, 0), finish(child)
            done = channel.pop_done()
            seen += [d[0] for d in done]
            for _ in range(len(seen) // 64 - (len(seen) - len(done)) // 64):
                channel.push_job(0, 0, 0, 1)
        assert seen == list(range(total))
        assert finish(child) == (0, b"", b"")
        assert header(channel).lock == 0 and header(channel).broken == 0
    finally:
        kill(child)


def test_the_worker_side_waits_for_the_master_without_bound(channel):
    worker = attached(channel)
    try:
        assert lib.ms_channel_lock(channel.layout, -1) == lib.MS_OK  # the master holds the lock
        waiting = Call(worker.push_done, 1, 0, 0, -1)
        time.sleep(0.05)
        assert waiting.thread.is_alive()
        lib.ms_channel_unlock(channel.layout)
        assert waiting.result() is None
        assert channel.pop_done() == [(1, 0, 0, 0)]
    finally:
        worker.unmap()


def test_a_lock_holder_killed_and_not_yet_reaped_is_seen_dead(channel):
    """The pidfd tells the exit at once: the zombie the master has not reaped yet does not hold it up until
    its bound (status -5, not -8)."""
    child = hold_lock(channel)
    try:
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + HANG_S
        while True:  # a zombie now, unreaped
            with open(f"/proc/{child.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            assert time.monotonic() < deadline
            time.sleep(0.001)
        with pytest.raises(ChannelBroken, match=BROKEN):
            Call(channel.push_job, 1, 0, 0, 1).result()
        assert header(channel).broken == 1 and header(channel).lock == 0  # taken from the dead and released
        for call in master_calls(channel):
            with pytest.raises(ChannelBroken, match=BROKEN):
                Call(call).result()
    finally:
        kill(child)


def test_a_live_worker_keeping_the_lock_gets_the_master_a_timeout_not_a_hang(channel):
    worker = attached(channel)
    child = hold_lock(channel)  # and never lets go
    try:
        waiting = Call(worker.pop_batch, 0, 0)  # a worker thread asleep for jobs: woken by the breakage
        with pytest.raises(ChannelBroken, match=TIMED_OUT):
            Call(channel.push_job, 1, 0, 0, 1).result()
        assert header(channel).broken == 1
        with pytest.raises(ChannelBroken, match=BROKEN):
            waiting.result()
        for call in master_calls(channel):  # broken: no second wait for the lock
            with pytest.raises(ChannelBroken, match=BROKEN):
                Call(call).result()
        assert child.poll() is None and header(channel).lock & ~LOCK_WAITERS == child.pid  # it still holds it
        # as worker_process.py does on ChannelBroken: kill it; what the master does next finds it gone
        child.kill()
        child.wait(HANG_S)
        with pytest.raises(ChannelBroken, match=BROKEN):
            Call(channel.take_jobs).result()
    finally:
        kill(child)
        worker.unmap()


@pytest.mark.parametrize("word", ["dead pid", "dead pid, waiters", "waiters only", "all ones", "bit 30",
                                  "bit 30 and own pid", "own pid", "own pid, waiters", "live pid"])
def test_garbage_in_the_lock_word_breaks_the_channel_within_the_bound(channel, word):
    """What a worker may write into a free lock word: a word naming no process breaks the channel (status -5);
    one naming a live process (the master's own pid included) makes the master's call wait out its bound
    (status -8). Either way every later call is ChannelBroken at once."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        value, expected = {
            "dead pid": (dead_pid(), BROKEN), "dead pid, waiters": (dead_pid() | LOCK_WAITERS, BROKEN),
            "waiters only": (LOCK_WAITERS, BROKEN), "all ones": (2 ** 32 - 1, BROKEN), "bit 30": (1 << 30, BROKEN),
            "bit 30 and own pid": ((1 << 30) | os.getpid(), BROKEN), "own pid": (os.getpid(), TIMED_OUT),
            "own pid, waiters": (os.getpid() | LOCK_WAITERS, TIMED_OUT), "live pid": (sleeper.pid, TIMED_OUT),
        }[word]
        h = header(channel)
        h.lock = value
        calls = master_calls(channel)
        with pytest.raises(ChannelBroken, match=expected):
            Call(calls[0]).result()
        assert h.broken == 1
        for call in calls:
            with pytest.raises(ChannelBroken, match=BROKEN):
                Call(call).result()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_worker_stealing_the_lock_the_master_holds_breaks_the_channel(channel):
    h = header(channel)
    assert lib.ms_channel_lock(channel.layout, -1) == lib.MS_OK
    h.lock = dead_pid()  # the "worker" writes itself in as the owner
    lib.ms_channel_unlock(channel.layout)  # the master releases a word that no longer names it
    assert h.lock == 0 and h.broken == 1
    with pytest.raises(ChannelBroken, match=BROKEN):
        Call(channel.push_job, 1, 0, 0, 1).result()


WAIT_FOR_JOBS = """
    import sys
    from mindserve._transport.shm_channel import ShmChannel
    channel = ShmChannel.attach(int(sys.argv[1]))
    print("waiting", flush=True)
    channel.pop_batch(0, 0)
    print("unexpected job", flush=True)
"""


def wait_until_sleeping(pid: int) -> None:
    """Give the child the time to fall asleep in its futex wait (the test holds either way)."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/wchan") as f:
                if "futex" in f.read():
                    return
        except OSError:
            break
        time.sleep(0.005)
    time.sleep(0.1)


def test_a_worker_killed_while_waiting_does_not_break_the_channel(channel):
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    for _ in range(2):  # two waiters killed in turn: nothing they leave behind may stall the next
        child = start_child(WAIT_FOR_JOBS, channel)
        try:
            assert read_line(child) == b"waiting"
            wait_until_sleeping(child.pid)
            child.kill()
            child.wait(HANG_S)
        finally:
            kill(child)
    worker = attached(channel)
    try:
        Call(channel.push_job, 1, 0, 0, 1).result()
        assert Call(worker.pop_batch, 0, 0).result() == [(1, 0, 0, 1)]
        # a new waiter, woken by a push while the dead ones' waits are history
        waiting = Call(worker.pop_batch, 0, 0)
        time.sleep(0.05)
        Call(channel.push_job, 2, 0, 0, 1).result()
        assert waiting.result() == [(2, 0, 0, 1)]
        Call(worker.push_done, 2, 0, 0, efd).result()
        assert os.eventfd_read(efd) == 1
        assert Call(channel.pop_done).result() == [(2, 0, 0, 0)]
        # and a real worker process serves the same channel afterwards
        child = start_child(ECHO_WORKER, channel, efd)
        try:
            offset = channel.alloc(REQUESTS, 5)
            channel.view[offset:offset + 5] = b"hello"
            channel.push_job(3, offset, 5, 1)
            ready, _, _ = select.select([efd], [], [], HANG_S)
            assert ready
            os.eventfd_read(efd)
            [(job_id, at, size, _)] = channel.pop_done()
            assert job_id == 3
            assert bytes(channel.view[at:at + size]) == b"ollehhello" + (3).to_bytes(8, "little") + b"\1"
            channel.close()
            assert finish(child) == (0, b"", b"")
        finally:
            kill(child)
    finally:
        worker.unmap()
        os.close(efd)


# ----------------------------------------------------------------------------------------------- hostile worker
#
# The worker runs user code and can write anything into the segment at any time. The master takes the layout
# from its own view (ms_view), keeps its arena ring to itself, and checks every queue position and block header
# it reads: garbage is ChannelBroken (MS_ECORRUPT), never an access outside the segment. The lock is a futex
# word naming its owner's pid, no pointer: garbage there only makes the master wait (within its bound) or find
# the channel broken (the tests of the lock above, and the scribbling worker below).

def header(ch: ShmChannel):
    """The shared header of a channel, as cffi sees it (the fields a hostile worker would write)."""
    return ffi.cast("ms_channel *", ch._base)


def header_bytes(ch: ShmChannel) -> bytes:
    return bytes(ffi.buffer(header(ch)))


def test_the_layout_in_the_header_is_read_once_at_attach(channel):
    worker = attached(channel)
    saved = header_bytes(channel)
    h = header(channel)
    try:
        requests, replies = arena_model(channel, REQUESTS), arena_model(worker, REPLIES)
        biggest = channel.max_message(REQUESTS), worker.max_message(REPLIES)
        # every layout field of the header turned to garbage: what a worker would write to steer the master
        h.magic, h.size = 0, U64_MAX
        for queue in (h.jobs, h.done):
            queue.entries.offset, queue.entries.capacity = U64_MAX - 63, 2 ** 62
        for arena in (h.requests, h.replies):
            arena.offset, arena.capacity = SEG * 16, U64_MAX - 63
        # both sides carry on with the layout they took at init and attach
        for n in range(3):
            offset = channel.alloc(REQUESTS, 100)
            assert offset == requests.alloc(100)
            channel.view[offset:offset + 5] = b"hello"
            channel.push_job(n, offset, 5, 1)
            [(job_id, at, size, _)] = Call(worker.pop_batch, 0, 0).result()
            assert (job_id, at, size) == (n, offset, 5) and worker.contains(REQUESTS, at, size)
            reply = worker.alloc(REPLIES, 64)
            assert reply == replies.alloc(64)
            worker.push_done(n, reply, 64, -1)
            assert channel.pop_done() == [(n, reply, 64, 0)]
            assert channel.contains(REPLIES, reply, 64) and not channel.contains(REQUESTS, reply, 64)
            channel.release(REPLIES, reply)
            channel.release(REQUESTS, offset)
            replies.release(reply)
            requests.release(offset)
        assert (channel.max_message(REQUESTS), worker.max_message(REPLIES)) == biggest
        assert channel.take_jobs() == []
        # a fresh attach, though, finds the garbage and refuses it
        with pytest.raises(ChannelBroken, match=r"status -7"):
            ShmChannel.attach(channel.fd)
    finally:
        ffi.memmove(h, saved, len(saved))
        worker.unmap()


def test_the_arenas_ring_state_is_not_in_the_segment(channel):
    worker = attached(channel)
    try:
        before = header_bytes(channel)
        live = []
        for n in range(50):  # round the ring of both arenas, from both processes' views
            live.append((REQUESTS, channel.alloc(REQUESTS, 1000 * (n % 7))))
            live.append((REPLIES, worker.alloc(REPLIES, 3000 * (n % 5))))
            if len(live) > 6:
                channel.release(*live.pop(0))
        for which, offset in live:
            channel.release(which, offset)
        assert header_bytes(channel) == before  # allocations and releases leave the header alone
    finally:
        worker.unmap()


def corrupt(call):
    """Runs ``call`` and checks that it raised ChannelBroken for corrupt shared memory (status -7)."""
    with pytest.raises(ChannelBroken, match=r"status -7"):
        Call(call).result()


@pytest.mark.parametrize("queue", ["jobs", "done"])
def test_garbage_queue_positions_are_corrupt_never_out_of_bounds(channel, queue):
    h = header(channel)
    q = getattr(h, queue)
    push = (lambda: channel.push_job(7, 0, 0, 1)) if queue == "jobs" else (lambda: channel.push_done(7, 0, 0, -1))
    takes = [channel.take_jobs, lambda: channel.pop_batch(0, 0), lambda: channel.pop_batch(4, 60.0)] \
        if queue == "jobs" else [channel.pop_done]
    for head, tail in [(0, QUEUE_CAPACITY + 1), (5, 0), (0, U64_MAX), (2 ** 63, 0), (U64_MAX, QUEUE_CAPACITY)]:
        q.head, q.tail = head, tail  # more queued than the entry array holds
        corrupt(push)
        for take in takes:
            corrupt(take)
        assert (q.head, q.tail) == (head, tail)  # refused: nothing moved
    # positions anywhere in the 64-bit range are fine while they are consistent: the index wraps in the array
    for head in (U64_MAX, 2 ** 63 + 5, U64_MAX - QUEUE_CAPACITY + 3):
        q.head = q.tail = head
        push()
        assert q.tail == (head + 1) % 2 ** 64
        got = Call(takes[0]).result()
        assert [e[0] for e in got] == [7]
        assert (q.head, q.tail) == ((head + 1) % 2 ** 64,) * 2
    # a full queue of stale entries: all of them come back, read from inside the array only
    q.head, q.tail = 2 ** 63, 2 ** 63 + QUEUE_CAPACITY
    with pytest.raises(ArenaFull):
        push()
    assert len(Call(takes[0]).result()) == QUEUE_CAPACITY
    q.weight = 0
    assert Call(takes[0]).result() == []


def test_a_corrupt_job_queue_ends_a_batch_wait(channel):
    worker = attached(channel)
    try:
        channel.push_job(1, 0, 0, 1)
        waiting = Call(worker.pop_batch, 10, 60.0)
        time.sleep(0.05)
        header(channel).jobs.tail = 2 ** 40  # garbage while the worker waits for a fuller batch
        channel.set_backlog(True)  # anything that wakes it: it then finds the garbage
        with pytest.raises(ChannelBroken, match=r"status -7"):
            waiting.result()
    finally:
        worker.unmap()


@pytest.mark.parametrize("which", [REQUESTS, REPLIES])
def test_garbage_block_headers_never_move_the_ring_outside_the_arena(channel, which):
    model = arena_model(channel, which)
    need = align_up(100 + ALIGN)
    first, second, third = (channel.alloc(which, 100) for _ in range(3))
    channel.release(which, first)  # the producer reads this header at its next allocation
    size_word = ffi.cast("uint64_t *", ffi.from_buffer(channel.view))
    magic_word = ffi.cast("uint32_t *", ffi.from_buffer(channel.view))
    at = (first - ALIGN) // 8
    bad_sizes = [0, 1, 63, need + 1, need - 64 + 8, 3 * need + ALIGN, model.capacity, U64_MAX - 63, 2 ** 63,
                 U64_MAX]
    for size in bad_sizes:
        size_word[at] = size
        with pytest.raises(ChannelBroken, match=r"^arena allocation failed \(status -7\)$"):
            channel.alloc(which, 100)
        size_word[at] = need
    magic_word[at * 2 + 2] ^= 1
    with pytest.raises(ChannelBroken):
        channel.alloc(which, 100)
    magic_word[at * 2 + 2] ^= 1
    # set right again, the ring goes on where it was
    fourth = channel.alloc(which, 100)
    assert fourth == third + need
    with pytest.raises(ValueError):
        channel.release(which, first)  # reclaimed

    # a live block whose header was rewritten cannot be released
    magic_word[(second - ALIGN) // 4 + 2] ^= 0xFF
    assert lib.ms_release(channel.layout, which, second) == lib.MS_EINVAL
    magic_word[(second - ALIGN) // 4 + 2] ^= 0xFF
    for offset in (second, third, fourth):
        channel.release(which, offset)


@pytest.mark.parametrize("which", [REQUESTS, REPLIES])
def test_a_freed_header_claiming_to_cross_the_end_of_the_ring_is_corrupt(channel, which):
    model = arena_model(channel, which)
    capacity = model.capacity
    big = channel.alloc(which, capacity - 4 * ALIGN)  # its block ends 192 bytes before the end of the ring
    small = channel.alloc(which, ALIGN)  # 128 bytes, then 64 left
    channel.release(which, big)
    wrapped = channel.alloc(which, ALIGN)  # the last 64 bytes are skipped: this one starts at the front
    assert wrapped == model.offset + ALIGN
    channel.release(which, small)
    size_word = ffi.cast("uint64_t *", ffi.from_buffer(channel.view))
    at = (small - ALIGN) // 8
    assert size_word[at] == 2 * ALIGN
    size_word[at] = 4 * ALIGN  # inside the live part, but across the end of the ring
    with pytest.raises(ChannelBroken):
        channel.alloc(which, 0)
    size_word[at] = 2 * ALIGN
    channel.release(which, wrapped)
    assert channel.alloc(which, channel.max_message(which)) == model.offset + ALIGN


def test_a_backlog_in_the_master_ends_the_batch_delay(channel):
    worker = attached(channel)
    try:
        channel.push_job(1, 0, 0, 1)
        delayed = Call(worker.pop_batch, 10, 60.0)
        time.sleep(0.05)
        assert delayed.thread.is_alive()  # one instance of ten: it waits for more
        channel.set_backlog(True)
        assert header(channel).backlog == 1
        assert delayed.result() == [(1, 0, 0, 1)]
        # while the master has a backlog, a batch takes what is queued without waiting
        channel.push_job(2, 0, 0, 1)
        assert Call(worker.pop_batch, 10, 60.0).result() == [(2, 0, 0, 1)]
        channel.set_backlog(True)  # no change: nothing reaches the segment
        # a pop still waits for the first job
        first = Call(worker.pop_batch, 10, 60.0)
        time.sleep(0.05)
        assert first.thread.is_alive()
        channel.push_job(3, 0, 0, 1)
        assert first.result() == [(3, 0, 0, 1)]

        channel.set_backlog(False)  # the backlog is gone: batches wait for more again
        assert header(channel).backlog == 0
        channel.push_job(4, 0, 0, 1)
        delayed = Call(worker.pop_batch, 10, 60.0)
        time.sleep(0.05)
        assert delayed.thread.is_alive()
        channel.close()
        assert delayed.result() == [(4, 0, 0, 1)]
        channel.set_backlog(True)  # after close (or on a broken channel) it never raises
    finally:
        worker.unmap()


GUARDED_MASTER = """
    import ctypes, mmap, os, random, sys
    from mindserve._native import ffi, lib
    from mindserve._transport.shm_channel import (ShmChannel, REQUESTS, REPLIES, ArenaFull, ChannelBroken,
                                                  ChannelClosed, MessageTooBig, QUEUE_CAPACITY)
    size = int(sys.argv[2])
    # the segment mapped between two inaccessible pages: a read or write just outside it kills the process
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    page, prot_none, map_fixed = mmap.PAGESIZE, 0, 0x10
    region = libc.mmap(None, size + 2 * page, prot_none, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    base = libc.mmap(region + page, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | map_fixed,
                     int(sys.argv[1]), 0)
    assert base == region + page
    layout = ffi.new("ms_view *")
    assert lib.ms_channel_init(layout, ffi.cast("void *", base), size, QUEUE_CAPACITY) == 0
    channel = ShmChannel(-1, ffi.cast("void *", base), size, layout)
    trusted = bytes(ffi.buffer(layout))
    print("ready", flush=True)
    sys.stdin.readline()  # the hostile worker is at work
    rng = random.Random(int(sys.argv[3]))
    outcomes = {}
    live = []
    for step in range(int(sys.argv[4])):
        op = rng.randrange(6)
        try:
            if op == 0:
                size_ = rng.choice([0, 1, 100, 5000, rng.randrange(channel.max_message(REQUESTS) + 1)])
                offset = channel.alloc(REQUESTS, size_)
                assert offset % 64 == 0 and channel.contains(REQUESTS, offset, size_), (offset, size_)
                channel.view[offset:offset + size_] = b"x" * size_
                live.append(offset)
            elif op == 1 and live:
                channel.release(REQUESTS, live.pop(rng.randrange(len(live))))
            elif op == 2:
                channel.push_job(step, rng.getrandbits(64), rng.getrandbits(64), rng.randrange(1, 5))
            elif op == 3:
                jobs = channel.take_jobs()
                assert len(jobs) <= QUEUE_CAPACITY
            elif op == 4:
                for job_id, offset, size_, _ in channel.pop_done():
                    if channel.contains(REPLIES, offset, size_):
                        bytes(channel.view[offset:offset + size_])
                        channel.release(REPLIES, offset)
            else:
                offset, size_ = rng.getrandbits(64), rng.getrandbits(rng.choice([6, 20, 64]))
                if channel.contains(REPLIES, offset, size_):
                    assert offset >= 64 and offset + size_ <= size
                    bytes(channel.view[offset:offset + size_])
            outcome = "ok"
        except (ChannelBroken, ArenaFull, ChannelClosed, MessageTooBig, ValueError) as exc:
            outcome = type(exc).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    layout.requests.head = layout.requests.tail = 0  # the master's own ring state: the rest never changes
    assert bytes(ffi.buffer(layout)) == trusted
    print(sorted(outcomes.items()), flush=True)
"""

HOSTILE_WORKER = """
    import os, random, sys
    from mindserve._native import ffi
    from mindserve._transport.shm_channel import ShmChannel
    channel = ShmChannel.attach(int(sys.argv[1]))
    rng = random.Random(int(sys.argv[2]))
    h = ffi.cast("ms_channel *", channel._base)
    u64 = ffi.cast("uint64_t *", channel._base)
    layout = channel.layout
    arenas = [(layout.requests.offset, layout.requests.capacity), (layout.replies.offset, layout.replies.capacity)]
    garbage = lambda: rng.choice([0, 1, 63, 64, 2 ** 63, 2 ** 64 - 1, 2 ** 64 - 64, rng.getrandbits(64),
                                  rng.getrandbits(12) * 64, rng.getrandbits(20)])
    me, master, waiters = os.getpid(), int(sys.argv[3]), 1 << 31
    with open("/proc/sys/kernel/pid_max") as f:
        dead = int(f.read()) + 1
    print("scribbling", flush=True)
    while True:
        target = rng.randrange(9)
        if target == 0:  # layout fields
            q = rng.choice([h.jobs, h.done])
            setattr(q.entries, rng.choice(["offset", "capacity"]), garbage())
            r = rng.choice([h.requests, h.replies])
            setattr(r, rng.choice(["offset", "capacity"]), garbage())
            h.size = garbage()
        elif target in (1, 2):  # queue positions and weights
            q = rng.choice([h.jobs, h.done])
            near = (q.head + rng.randrange(layout.jobs.capacity + 64)) % 2 ** 64  # just past full, or not
            setattr(q, rng.choice(["head", "tail", "weight"]), garbage() if rng.random() < 0.5 else near)
        elif target == 3:  # flags
            h.closed, h.backlog = int(rng.random() < 0.05), int(rng.random() < 0.5)
        elif target in (4, 5, 6):  # block headers (size, magic, state) anywhere on the 64-byte grid of an arena
            offset, capacity = rng.choice(arenas)
            word = (offset + rng.randrange(capacity // 64) * 64) // 8
            if rng.random() < 0.5:
                u64[word] = garbage()
            else:
                u64[word + 1] = rng.choice([0x4d53424b | (1 << 32), 0x4d53424b | (2 << 32), garbage()])
        elif target == 7:  # done entries that point anywhere
            e = ffi.cast("ms_entry *", channel._base + layout.done.offset)[rng.randrange(layout.done.capacity)]
            e.id, e.offset, e.size = garbage(), garbage(), garbage()
        elif rng.random() < 0.25:  # the lock word (free, a live pid, a dead one, no pid at all), whoever holds
            # it; and the breakage
            h.lock = rng.choice([0, 0, 0, me, me | waiters, master, master | waiters, dead, dead | waiters, waiters,
                                 1 << 30, 2 ** 32 - 1, rng.getrandbits(32)])
            if rng.random() < 0.2:
                h.broken = 0  # so that the master keeps meeting the rest of the garbage
"""


def test_a_hostile_worker_scribbling_everywhere_never_takes_the_master_outside_the_segment(channel):
    """A master process (its segment between guard pages) keeps allocating, pushing and popping while another
    process writes garbage all over the header (the lock word included), the queues and the arenas' block
    headers.
    Every call returns or raises ChannelBroken / ArenaFull / ValueError ...; the master survives."""
    master = subprocess.Popen([sys.executable, "-c", textwrap.dedent(GUARDED_MASTER), str(channel.fd),
                               str(SEG), "7", "20000"], pass_fds=(channel.fd,), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    hostile = None
    try:
        assert read_line(master) == b"ready"
        hostile = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOSTILE_WORKER), str(channel.fd), "11",
                                    str(master.pid)], pass_fds=(channel.fd,), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        assert read_line(hostile) == b"scribbling"
        master.stdin.write(b"go\n")
        master.stdin.flush()
        code, out, err = finish(master)
        assert (code, err) == (0, b""), (code, err.decode())
        assert hostile.poll() is None, finish(hostile)  # it was scribbling the whole time
        outcomes = dict(ast.literal_eval(out.decode()))
        assert outcomes.get("ok", 0) > 100 and outcomes.get("ChannelBroken", 0) > 100, outcomes
    finally:
        kill(master)
        if hostile is not None:
            kill(hostile)


# ------------------------------------------------------------------------------------- the master's supervision

class SleepingWorker:
    """A WorkerProcess whose channel is real and whose process is a sleeper (no servable): what the master
    does when the channel turns out corrupt, and how it flags its backlog."""

    def __init__(self):
        import asyncio
        from mindserve._supervision.worker_process import WorkerProcess, WorkerSpec
        self.loop = asyncio.new_event_loop()
        self.worker = WorkerProcess(WorkerSpec("/nowhere", "servable", 1, 0, None), lambda *args: None)
        self.worker._channel = ShmChannel.create(SEG, "the test")
        self.worker._event_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.worker._process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.worker.alive = True
        self.channel = self.worker._channel

    def job(self, size: int = 100):
        from mindserve._supervision.worker_process import Job
        from mindserve._tensor import RawTensor
        return Job("m", [{"x": RawTensor(9, (size,), bytes(size))}], self.loop.create_future())

    def killed(self) -> bool:
        try:
            return self.worker._process.wait(HANG_S) == -signal.SIGKILL
        except subprocess.TimeoutExpired:
            return False

    def close(self) -> None:
        if self.worker._process.poll() is None:
            self.worker._process.kill()
        self.worker._process.wait()
        os.close(self.worker._event_fd)
        self.channel.close_fd()
        self.channel.unmap()
        self.loop.close()


@pytest.fixture
def sleeping_worker():
    worker = SleepingWorker()
    yield worker
    worker.close()


def test_a_corrupt_done_queue_gets_the_worker_killed(sleeping_worker):
    w = sleeping_worker
    w.worker.submit(w.job())
    header(w.channel).done.tail = header(w.channel).done.head + QUEUE_CAPACITY + 1
    os.eventfd_write(w.worker._event_fd, 1)
    w.worker._on_replies()  # the eventfd fired: the pop finds garbage and stops the worker, as for a dead one
    assert w.killed()


def test_a_corrupt_request_arena_gets_the_worker_killed_and_keeps_the_job(sleeping_worker):
    w = sleeping_worker
    first = w.job()
    w.worker.submit(first)
    [(_, offset, _, _)] = w.channel.take_jobs()  # as if the worker had taken it ...
    w.channel.release(REQUESTS, offset)  # ... and freed its block early
    ffi.cast("uint64_t *", ffi.from_buffer(w.channel.view))[(offset - ALIGN) // 8] = 3  # then broke its header
    second = w.job()
    w.worker.submit(second)  # the allocation finds the garbage
    assert w.killed()
    assert list(w.worker._backlog) == [second]  # not failed: it goes to another worker once this one is gone
    assert not second.future.done()
    assert header(w.channel).backlog == 1


def test_the_master_flags_its_backlog_while_it_has_one(sleeping_worker):
    w = sleeping_worker
    h = header(w.channel)
    big = w.channel.max_message(REQUESTS) // 2 - 4096
    jobs = [w.job(big) for _ in range(3)]  # two fit the request arena, the third waits
    for job in jobs:
        w.worker.submit(job)
    assert list(w.worker._backlog) == [jobs[2]] and h.backlog == 1
    taken = w.channel.take_jobs()  # the worker ran the first two; their blocks come free
    for _, offset, _, _ in taken:
        w.channel.release(REQUESTS, offset)
    w.worker._flush_backlog()
    assert not w.worker._backlog and h.backlog == 0


WINDOW = 4 << 20  # MS_ARENA_WINDOW in native/arena.c


def test_the_ring_wraps_early_while_the_live_blocks_fit_in_its_window():
    """Messages of 1 MiB, three alive at a time, through a 64 MiB segment: the ring keeps to its first few
    MiB (memory still in the caches) instead of running through the whole arena, and live blocks never overlap."""
    ch = ShmChannel.create(64 << 20, "the test")
    try:
        start = ch.alloc(REQUESTS, 64)
        ch.release(REQUESTS, start)  # the arena is empty again: its ring starts at the front
        live: deque = deque()
        highest = 0
        for i in range(200):
            if len(live) == 3:
                ch.release(REQUESTS, live.popleft()[0])
            offset = ch.alloc(REQUESTS, 1 << 20)
            for other, _ in live:
                assert offset + (1 << 20) <= other or other + (1 << 20) <= offset
            ch.view[offset:offset + 8] = i.to_bytes(8, "little")
            live.append((offset, i))
            highest = max(highest, offset + (1 << 20) - start)
        assert highest <= WINDOW + (1 << 20) + 4096
        for offset, i in live:  # no block was handed out twice while alive
            assert int.from_bytes(ch.view[offset:offset + 8], "little") == i
    finally:
        ch.unmap()
        ch.close_fd()


def test_live_blocks_larger_than_the_window_run_on_through_the_ring():
    ch = ShmChannel.create(64 << 20, "the test")
    try:
        size = 3 << 20
        live = [ch.alloc(REQUESTS, size) for _ in range(5)]  # 15 MiB alive: past the window
        assert max(live) - min(live) >= WINDOW
        for offset in live[:2]:
            ch.release(REQUESTS, offset)
        again = ch.alloc(REQUESTS, size)  # the front is free again: the ring wraps there, clear of the live ones
        assert all(again + size <= o or o + size <= again for o in live[2:])
    finally:
        ch.unmap()
        ch.close_fd()
