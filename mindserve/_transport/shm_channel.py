"""The Python face of the native channel (native/channel.h): one shared-memory segment per worker holding a
job queue, a done queue and two message arenas.

The master creates it (:meth:`ShmChannel.create`) and passes the segment's file descriptor to the worker, which
maps it (:meth:`ShmChannel.attach`). Every call goes straight to C; cffi releases the GIL around each one, so
a worker blocked in :meth:`pop_batch` holds up no other thread.

The worker runs user code, so the master trusts nothing in the segment: each ShmChannel keeps its own copy of
the channel's layout (an ``ms_view`` in process memory, made by the master's init or checked at the worker's
attach) and every C call addresses the segment through it. Garbage written into the segment by the other
process makes a call raise :class:`ChannelBroken`, never reach outside the segment.
"""

from __future__ import annotations

import os
import secrets
from typing import Optional

from mindserve._native import ffi, lib

REQUESTS = lib.MS_REQUESTS
REPLIES = lib.MS_REPLIES
QUEUE_CAPACITY = 1024  # jobs a worker can have queued or in progress; more wait in the master
SHM_DIR = "/dev/shm"


class ChannelBroken(Exception):
    """The other process died holding the channel lock, kept it past the master's bound (status MS_ETIMEDOUT,
    about a second: see native/channel.h), or the segment does not hold a sound channel (never was one, or the
    other process wrote garbage into it): drop the channel and end the worker."""


class ChannelClosed(Exception):
    """The master closed the channel and no job is left."""


class ArenaFull(Exception):
    """No room in an arena until older messages are released."""


class MessageTooBig(Exception):
    """A message larger than its arena can ever hold."""


_ERRORS = {
    lib.MS_EBROKEN: ChannelBroken,
    lib.MS_ECORRUPT: ChannelBroken,
    lib.MS_ETIMEDOUT: ChannelBroken,
    lib.MS_ECLOSED: ChannelClosed,
    lib.MS_EFULL: ArenaFull,
    lib.MS_ETOOBIG: MessageTooBig,
}


def _check(status: int, what: str) -> None:
    if status == lib.MS_OK:
        return
    if status == lib.MS_ESYS:
        raise OSError(ffi.errno, f"{what}: {os.strerror(ffi.errno)}")
    raise _ERRORS.get(status, ValueError)(f"{what} failed (status {status})")


def shm_free_bytes() -> Optional[int]:
    """Bytes free in /dev/shm, or None where there is no such file system."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class ShmChannel:
    """A mapped channel segment. ``view`` is a writable memoryview of the whole segment; offsets given to and
    returned by the methods are offsets into it.

    ``layout`` is the process-local ``ms_view *`` (base, size, where each queue and arena lies, and the ring
    state of the arena this process produces into) that every C call is given; the segment's own header is
    read only once, by :meth:`attach`. One ShmChannel per process and arena producer: two objects producing
    into the same arena would each keep their own ring."""

    def __init__(self, fd: int, base, size: int, layout):
        self.fd = fd
        self.size = size
        self._base = base
        self.layout = layout
        self.view = memoryview(ffi.buffer(base, size))
        self._backlog = False
        self._entries = ffi.new("ms_entry[]", QUEUE_CAPACITY)
        self._one = ffi.new("ms_entry *")
        self._offset = ffi.new("uint64_t *")
        self._count = ffi.new("size_t *")

    @classmethod
    def create(cls, size: int, owner: str) -> "ShmChannel":
        """A new segment of ``size`` bytes, pages reserved, mode 0600, with no name left in /dev/shm.
        Raises RuntimeError naming ``owner`` when /dev/shm cannot hold it."""
        free = shm_free_bytes()
        if free is not None and free < size:
            raise RuntimeError(_no_room(owner, size, free))
        name = f"/mindserve-{secrets.token_hex(16)}".encode()  # 128 random bits: not to be guessed
        fd = ffi.new("int *")
        status = lib.ms_segment_create(name, size, fd)
        if status == lib.MS_ESYS:
            err = ffi.errno
            raise RuntimeError(
                _no_room(owner, size, shm_free_bytes())
                if err == 28
                else f"cannot create the shared memory of {owner}: {os.strerror(err)}"
            )
        base = cls._map(fd[0], size)
        layout = ffi.new("ms_view *")
        if lib.ms_channel_init(layout, base, size, QUEUE_CAPACITY) != lib.MS_OK:
            os.close(fd[0])
            lib.ms_segment_unmap(base, size)
            raise RuntimeError(f"cannot set up the shared memory channel of {owner} ({size} bytes)")
        return cls(fd[0], base, size, layout)

    @classmethod
    def attach(cls, fd: int) -> "ShmChannel":
        """Map the segment behind ``fd`` (handed over by the master) after checking that it holds a channel."""
        size = ffi.new("uint64_t *")
        _check(lib.ms_segment_size(fd, size), "fstat of the channel segment")
        base = cls._map(fd, size[0])
        layout = ffi.new("ms_view *")
        status = lib.ms_channel_attach(layout, base, size[0])
        if status != lib.MS_OK:
            lib.ms_segment_unmap(base, size[0])  # the caller keeps ``fd``; the mapping is ours to end
            _check(status, "channel check")
        return cls(fd, base, size[0], layout)

    @staticmethod
    def _map(fd: int, size: int):
        base = lib.ms_segment_map(fd, size)
        if base == ffi.NULL:
            err = ffi.errno
            os.close(fd)
            raise OSError(err, f"mmap of the channel segment: {os.strerror(err)}")
        return base

    def max_message(self, which: int) -> int:
        """The largest message arena ``which`` can ever hold."""
        return lib.ms_max_alloc(self.layout, which)

    def alloc(self, which: int, size: int) -> int:
        """Offset of a new message block of ``size`` bytes; ArenaFull or MessageTooBig when there is no room."""
        _check(lib.ms_alloc(self.layout, which, size, self._offset), "arena allocation")
        return self._offset[0]

    def release(self, which: int, offset: int) -> None:
        """Free the block whose data is at ``offset``; ValueError when that is not a live block of ``which``."""
        _check(lib.ms_release(self.layout, which, offset), "arena release")

    def contains(self, which: int, offset: int, size: int) -> bool:
        """Whether [offset, offset + size) lies inside arena ``which``: checked before any entry is read."""
        return bool(lib.ms_contains(self.layout, which, offset, size))

    def push_job(self, job_id: int, offset: int, size: int, weight: int) -> None:
        """Queue a job; ArenaFull when the queue is full, ChannelClosed, ChannelBroken."""
        e = self._one
        e.id, e.offset, e.size, e.weight = job_id, offset, size, weight
        _check(lib.ms_push_job(self.layout, e), "job push")

    def set_backlog(self, backlog: bool) -> None:
        """Tell the worker whether jobs wait in the master for room in the channel: while they do, a batch
        stops waiting for more jobs (they cannot come before the worker frees room). Only a change reaches
        the segment. Never raises: on a broken channel the flag is moot, and the next push or pop reports it."""
        backlog = bool(backlog)
        if backlog != self._backlog and self._base is not None:
            self._backlog = backlog
            lib.ms_channel_set_backlog(self.layout, backlog)

    def pop_batch(self, max_items: int, max_delay_s: float) -> list[tuple[int, int, int, int]]:
        """Block until jobs are queued, then take up to ``max_items`` instances' worth (0: all), waiting up to
        ``max_delay_s`` after the oldest arrived for more (not while the master has a backlog). (id, offset,
        size, weight) per job; raises ChannelClosed once the master closed the channel and nothing is left."""
        _check(
            lib.ms_pop_batch(
                self.layout, max_items, int(max_delay_s * 1e9), self._entries, QUEUE_CAPACITY, self._count
            ),
            "batch pop",
        )
        return self._taken()

    def queued_ns(self, now_ns: int) -> list[int]:
        """How long each job of the last ``pop_batch`` waited in the queue, in nanoseconds, as of ``now_ns``
        (``time.monotonic_ns()``: the C side stamps each push with the same clock)."""
        entries = self._entries
        return [max(now_ns - entries[i].enqueued_ns, 0) for i in range(self._count[0])]

    def take_jobs(self) -> list[tuple[int, int, int, int]]:
        """Jobs queued and not taken by the worker (after it died); ChannelBroken when the queue is garbage."""
        _check(lib.ms_take_jobs(self.layout, self._entries, QUEUE_CAPACITY, self._count), "job take")
        return self._taken()

    def push_done(self, job_id: int, offset: int, size: int, event_fd: int) -> None:
        """Queue a completion and write ``event_fd`` (-1: none); ArenaFull when the done queue is full."""
        e = self._one
        e.id, e.offset, e.size, e.weight = job_id, offset, size, 0
        _check(lib.ms_push_done(self.layout, e, event_fd), "done push")

    def pop_done(self) -> list[tuple[int, int, int, int]]:
        """Every queued completion as (id, offset, size, 0), never blocking; ChannelBroken when the done queue
        is garbage. Offsets and sizes are the worker's word: check them with :meth:`contains`."""
        _check(lib.ms_pop_done(self.layout, self._entries, QUEUE_CAPACITY, self._count), "done pop")
        return self._taken()

    def _taken(self) -> list[tuple[int, int, int, int]]:
        entries = self._entries
        return [(e.id, e.offset, e.size, e.weight) for e in (entries[i] for i in range(self._count[0]))]

    def close(self) -> None:
        """Tell the worker to finish the queued jobs and stop popping."""
        _check(lib.ms_channel_close(self.layout), "channel close")

    def close_fd(self) -> None:
        """Close the segment's descriptor (the mapping stays)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def unmap(self) -> None:
        """End the mapping; nothing may use ``view`` or arrays over it afterwards."""
        if self._base is None:
            return
        try:
            self.view.release()
        except BufferError:  # something still reads the segment: keep the mapping rather than crash later
            return
        lib.ms_segment_unmap(self._base, self.size)
        self._base = None


def _no_room(owner: str, size: int, free: Optional[int]) -> str:
    have = f"{free >> 20} MB free" if free is not None else "not enough room"
    return (
        f"cannot reserve {size >> 20} MB of shared memory for {owner}: {SHM_DIR} has {have}; lower "
        f"shm_size_mb in ServableStartConfig or give the machine (or container: --shm-size) more shared memory"
    )
