"""The native channel's lock, a futex word naming its owner's pid (native/channel.h, "The lock"), between real
processes: waits for a live holder (bounded for the master), a dead or garbage owner breaking the channel, and
workers killed while they wait.

Every call that could block is made from a thread joined with a generous timeout (support/channel.py's Call),
so that a hang fails the test instead of stalling the run; no test asserts how long anything took."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mindserve._native import ffi, lib
from mindserve._transport import shm_channel
from mindserve._transport.shm_channel import REQUESTS, ChannelBroken, ShmChannel
from support.channel import ECHO_WORKER, HANG_S, Call, attached, finish, header, kill, read_line, start_child

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

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
    return [
        lambda: ch.push_job(1, 0, 0, 1),
        ch.pop_done,
        ch.take_jobs,
        ch.close,
        lambda: _check_status(lib.ms_channel_set_backlog(ch.layout, 1)),
    ]


def _check_status(status: int) -> None:
    shm_channel._check(status, "backlog")


def dead_pid() -> int:
    """A pid no process can have: above the kernel's pid_max (and inside the lock word's 30 pid bits)."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    assert pid_max + 1 < 2**30
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
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD_LOCK), str(channel.fd)],
        pass_fds=(channel.fd,),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert read_line(child) == b"locked"
    return child


def tell(child: subprocess.Popen, line: bytes) -> None:
    assert child.stdin is not None, "start the child with stdin=PIPE"
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
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CONTEND), str(channel.fd), str(total)],
        pass_fds=(channel.fd,),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert read_line(child) == b"ready"
        tell(child, b"go")
        seen: list[int] = []
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


@pytest.mark.parametrize(
    "word",
    [
        "dead pid",
        "dead pid, waiters",
        "waiters only",
        "all ones",
        "bit 30",
        "bit 30 and own pid",
        "own pid",
        "own pid, waiters",
        "live pid",
    ],
)
def test_garbage_in_the_lock_word_breaks_the_channel_within_the_bound(channel, word):
    """What a worker may write into a free lock word: a word naming no process breaks the channel (status -5);
    one naming a live process (the master's own pid included) makes the master's call wait out its bound
    (status -8). Either way every later call is ChannelBroken at once."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        value, expected = {
            "dead pid": (dead_pid(), BROKEN),
            "dead pid, waiters": (dead_pid() | LOCK_WAITERS, BROKEN),
            "waiters only": (LOCK_WAITERS, BROKEN),
            "all ones": (2**32 - 1, BROKEN),
            "bit 30": (1 << 30, BROKEN),
            "bit 30 and own pid": ((1 << 30) | os.getpid(), BROKEN),
            "own pid": (os.getpid(), TIMED_OUT),
            "own pid, waiters": (os.getpid() | LOCK_WAITERS, TIMED_OUT),
            "live pid": (sleeper.pid, TIMED_OUT),
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
            channel.view[offset : offset + 5] = b"hello"
            channel.push_job(3, offset, 5, 1)
            ready, _, _ = select.select([efd], [], [], HANG_S)
            assert ready
            os.eventfd_read(efd)
            [(job_id, at, size, _)] = channel.pop_done()
            assert job_id == 3
            assert bytes(channel.view[at : at + size]) == b"ollehhello" + (3).to_bytes(8, "little") + b"\1"
            channel.close()
            assert finish(child) == (0, b"", b"")
        finally:
            kill(child)
    finally:
        worker.unmap()
        os.close(efd)
