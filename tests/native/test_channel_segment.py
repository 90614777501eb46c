"""The native channel's segment and layout (native/segment.c, channel.c) through cffi and through ShmChannel:
segments that leave no name behind and are owner-only, the refusals of a segment that cannot be made, the
channel's set-up, and the checks of a header at attach."""

from __future__ import annotations

import errno
import fcntl
import glob
import os

import pytest

from mindserve._native import ffi, lib
from mindserve._transport import shm_channel
from mindserve._transport.shm_channel import QUEUE_CAPACITY, REPLIES, REQUESTS, ArenaFull, ChannelBroken, ShmChannel
from support.channel import ALIGN, SEG, U64_MAX, align_up, arena_model, attached

ENTRY_SIZE = ffi.sizeof("ms_entry")


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
            first.view[SEG - 4 :] = b"abcd"
            assert bytes(second.view[SEG - 4 :]) == b"\0\0\0\0"
            second.view[SEG - 8 : SEG - 4] = b"wxyz"
            assert bytes(first.view[SEG - 8 :]) == b"\0\0\0\0abcd"
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
        f"memory"
    )


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
    assert message == (
        "cannot reserve 8 MB of shared memory for worker of add v1: /dev/shm has 3 MB free; lower "
        "shm_size_mb in ServableStartConfig or give the machine (or container: --shm-size) more "
        "shared memory"
    )
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
    return (
        view.size,
        view.jobs.offset,
        view.jobs.capacity,
        view.done.offset,
        view.done.capacity,
        view.requests.offset,
        view.requests.capacity,
        view.requests.head,
        view.requests.tail,
        view.replies.offset,
        view.replies.capacity,
        view.replies.head,
        view.replies.tail,
    )


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
    return {
        "magic": 0,
        "size": 1,
        "jobs": find_pair(jobs_offset, QUEUE_CAPACITY),
        "done": find_pair(jobs_offset + queue_bytes, QUEUE_CAPACITY),
        "requests": find_pair(requests.offset, requests.capacity),
        "replies": find_pair(replies.offset, replies.capacity),
    }


def test_check_refuses_headers_that_point_outside_the_segment(channel):
    fields = header_fields(channel)
    assert fields["done"] > fields["jobs"] and fields["replies"] > fields["requests"]
    words = ffi.cast("uint64_t *", channel._base)
    size = channel.size
    bad = [(fields["magic"], words[0] ^ 1), (fields["size"], size + 64), (fields["size"], size - 64)]
    for queue in ("jobs", "done"):
        at = fields[queue]
        bad += [
            (at, 0),  # inside the header
            (at, size),
            (at, size - ENTRY_SIZE),
            (at, U64_MAX - 63),  # entries past the end
            (at + 1, 0),
            (at + 1, 2**62),  # no entries; capacity * entry size overflows
            (at + 1, (size - words[at]) // ENTRY_SIZE + 1),
        ]
    for arena in ("requests", "replies"):
        at = fields[arena]
        bad += [
            (at, words[at] + 8),  # misaligned
            (at, size),
            (at, size - 64),
            (at, U64_MAX - 63),
            (at + 1, 0),
            (at + 1, ALIGN),  # less than two headers
            (at + 1, words[at + 1] + 8),  # misaligned
            (at + 1, size - words[at] + 64),
            (at + 1, U64_MAX - 63),
        ]
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
