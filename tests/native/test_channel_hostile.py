"""A hostile worker against the native channel's master side: garbage in the header, the queues and the block
headers is ChannelBroken, never an access outside the segment; and what the master's supervision
(WorkerProcess) does with a worker whose channel turned out corrupt.

Every call that could block is made from a thread joined with a generous timeout (support/channel.py's Call),
so that a hang fails the test instead of stalling the run; no test asserts how long anything took."""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mindserve._native import ffi, lib
from mindserve._transport.shm_channel import QUEUE_CAPACITY, REPLIES, REQUESTS, ArenaFull, ChannelBroken, ShmChannel
from support.channel import (
    ALIGN,
    HANG_S,
    SEG,
    U64_MAX,
    Call,
    align_up,
    arena_model,
    attached,
    finish,
    header,
    kill,
    read_line,
)

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

# ----------------------------------------------------------------------------------------------- hostile worker
#
# The worker runs user code and can write anything into the segment at any time. The master takes the layout
# from its own view (ms_view), keeps its arena ring to itself, and checks every queue position and block header
# it reads: garbage is ChannelBroken (MS_ECORRUPT), never an access outside the segment. The lock is a futex
# word naming its owner's pid, no pointer: garbage there only makes the master wait (within its bound) or find
# the channel broken (the tests of the lock in test_channel_lock.py, and the scribbling worker below).


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
            queue.entries.offset, queue.entries.capacity = U64_MAX - 63, 2**62
        for arena in (h.requests, h.replies):
            arena.offset, arena.capacity = SEG * 16, U64_MAX - 63
        # both sides carry on with the layout they took at init and attach
        for n in range(3):
            offset = channel.alloc(REQUESTS, 100)
            assert offset == requests.alloc(100)
            channel.view[offset : offset + 5] = b"hello"
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
    takes = (
        [channel.take_jobs, lambda: channel.pop_batch(0, 0), lambda: channel.pop_batch(4, 60.0)]
        if queue == "jobs"
        else [channel.pop_done]
    )
    for head, tail in [(0, QUEUE_CAPACITY + 1), (5, 0), (0, U64_MAX), (2**63, 0), (U64_MAX, QUEUE_CAPACITY)]:
        q.head, q.tail = head, tail  # more queued than the entry array holds
        corrupt(push)
        for take in takes:
            corrupt(take)
        assert (q.head, q.tail) == (head, tail)  # refused: nothing moved
    # positions anywhere in the 64-bit range are fine while they are consistent: the index wraps in the array
    for head in (U64_MAX, 2**63 + 5, U64_MAX - QUEUE_CAPACITY + 3):
        q.head = q.tail = head
        push()
        assert q.tail == (head + 1) % 2**64
        got = Call(takes[0]).result()
        assert [e[0] for e in got] == [7]
        assert (q.head, q.tail) == ((head + 1) % 2**64,) * 2
    # a full queue of stale entries: all of them come back, read from inside the array only
    q.head, q.tail = 2**63, 2**63 + QUEUE_CAPACITY
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
        header(channel).jobs.tail = 2**40  # garbage while the worker waits for a fuller batch
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
    bad_sizes = [0, 1, 63, need + 1, need - 64 + 8, 3 * need + ALIGN, model.capacity, U64_MAX - 63, 2**63, U64_MAX]
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
    master = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(GUARDED_MASTER), str(channel.fd), str(SEG), "7", "20000"],
        pass_fds=(channel.fd,),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    hostile = None
    try:
        assert read_line(master) == b"ready"
        hostile = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(HOSTILE_WORKER), str(channel.fd), "11", str(master.pid)],
            pass_fds=(channel.fd,),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert read_line(hostile) == b"scribbling"
        assert master.stdin is not None
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
    """The master's job flow (mindserve._transport.job_flow) over a real channel, whose worker is a sleeper (no
    servable) that the flow's ``on_broken`` kills, as WorkerProcess does: what the master does when the channel
    turns out corrupt, and how it flags its backlog."""

    def __init__(self):
        import asyncio

        from mindserve._transport.job_flow import JobFlow

        self.loop = asyncio.new_event_loop()
        self.channel = ShmChannel.create(SEG, "the test")
        self.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.flow = JobFlow(self.channel, "the test's worker", self.process.kill)

    def job(self, size: int = 100):
        from mindserve._tensor import RawTensor
        from mindserve._transport.job_flow import Job

        return Job("m", [{"x": RawTensor(9, (size,), bytes(size))}], self.loop.create_future())

    def killed(self) -> bool:
        try:
            return self.process.wait(HANG_S) == -signal.SIGKILL
        except subprocess.TimeoutExpired:
            return False

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
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
    w.flow.submit(w.job())
    header(w.channel).done.tail = header(w.channel).done.head + QUEUE_CAPACITY + 1
    w.flow.take_replies()  # the eventfd fired: the pop finds garbage and stops the worker, as for a dead one
    assert w.killed()


def test_a_corrupt_request_arena_gets_the_worker_killed_and_keeps_the_job(sleeping_worker):
    w = sleeping_worker
    first = w.job()
    w.flow.submit(first)
    [(_, offset, _, _)] = w.channel.take_jobs()  # as if the worker had taken it ...
    w.channel.release(REQUESTS, offset)  # ... and freed its block early
    ffi.cast("uint64_t *", ffi.from_buffer(w.channel.view))[(offset - ALIGN) // 8] = 3  # then broke its header
    second = w.job()
    w.flow.submit(second)  # the allocation finds the garbage
    assert w.killed()
    assert list(w.flow._backlog) == [second]  # not failed: it goes to another worker once this one is gone
    assert not second.future.done()
    assert header(w.channel).backlog == 1


def test_the_master_flags_its_backlog_while_it_has_one(sleeping_worker):
    w = sleeping_worker
    h = header(w.channel)
    big = w.channel.max_message(REQUESTS) // 2 - 4096
    jobs = [w.job(big) for _ in range(3)]  # two fit the request arena, the third waits
    for job in jobs:
        w.flow.submit(job)
    assert list(w.flow._backlog) == [jobs[2]] and h.backlog == 1
    taken = w.channel.take_jobs()  # the worker ran the first two; their blocks come free
    for _, offset, _, _ in taken:
        w.channel.release(REQUESTS, offset)
    w.flow.flush_backlog()
    assert not w.flow._backlog and h.backlog == 0
