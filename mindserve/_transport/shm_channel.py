"""The Python face of the native channel (native/channel.h): one shared-memory segment per worker holding a
job queue, a done queue and two message arenas.

The master creates it (:meth:`ShmChannel.create`) and passes the segment's file descriptor to the worker, which
maps it (:meth:`ShmChannel.attach`). Every call goes straight to C; cffi releases the GIL around each one, so
a worker blocked in :meth:`pop_batch` holds up no other thread.
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
    """The other process died holding the channel lock, or the segment is not a channel: drop the channel."""


class ChannelClosed(Exception):
    """The master closed the channel and no job is left."""


class ArenaFull(Exception):
    """No room in an arena until older messages are released."""


class MessageTooBig(Exception):
    """A message larger than its arena can ever hold."""


_ERRORS = {lib.MS_EBROKEN: ChannelBroken, lib.MS_ECORRUPT: ChannelBroken, lib.MS_ECLOSED: ChannelClosed,
           lib.MS_EFULL: ArenaFull, lib.MS_ETOOBIG: MessageTooBig}


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
    returned by the methods are offsets into it."""

    def __init__(self, fd: int, base, size: int):
        self.fd = fd
        self.size = size
        self._base = base
        self.view = memoryview(ffi.buffer(base, size))
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
            raise RuntimeError(_no_room(owner, size, shm_free_bytes()) if err == 28 else
                               f"cannot create the shared memory of {owner}: {os.strerror(err)}")
        channel = cls._map(fd[0], size)
        if lib.ms_channel_init(channel._base, size, QUEUE_CAPACITY) != lib.MS_OK:
            channel.close_fd()
            channel.unmap()
            raise RuntimeError(f"cannot set up the shared memory channel of {owner} ({size} bytes)")
        return channel

    @classmethod
    def attach(cls, fd: int) -> "ShmChannel":
        """Map the segment behind ``fd`` (handed over by the master) after checking that it holds a channel."""
        size = ffi.new("uint64_t *")
        _check(lib.ms_segment_size(fd, size), "fstat of the channel segment")
        channel = cls._map(fd, size[0])
        status = lib.ms_channel_check(channel._base, channel.size)
        if status != lib.MS_OK:
            channel.unmap()  # the caller keeps ``fd``; the mapping is ours to end
            _check(status, "channel check")
        return channel

    @classmethod
    def _map(cls, fd: int, size: int) -> "ShmChannel":
        base = lib.ms_segment_map(fd, size)
        if base == ffi.NULL:
            err = ffi.errno
            os.close(fd)
            raise OSError(err, f"mmap of the channel segment: {os.strerror(err)}")
        return cls(fd, base, size)

    def max_message(self, which: int) -> int:
        return lib.ms_max_alloc(self._base, which)

    def alloc(self, which: int, size: int) -> int:
        """Offset of a new message block of ``size`` bytes; ArenaFull or MessageTooBig when there is no room."""
        _check(lib.ms_alloc(self._base, which, size, self._offset), "arena allocation")
        return self._offset[0]

    def release(self, which: int, offset: int) -> None:
        _check(lib.ms_release(self._base, which, offset), "arena release")

    def contains(self, which: int, offset: int, size: int) -> bool:
        """Whether [offset, offset + size) lies inside arena ``which``: checked before any entry is read."""
        return bool(lib.ms_contains(self._base, which, offset, size))

    def push_job(self, job_id: int, offset: int, size: int, weight: int) -> None:
        """Queue a job; ArenaFull when the queue is full, ChannelClosed, ChannelBroken."""
        e = self._one
        e.id, e.offset, e.size, e.weight = job_id, offset, size, weight
        _check(lib.ms_push_job(self._base, e), "job push")

    def pop_batch(self, max_items: int, max_delay_s: float) -> list[tuple[int, int, int, int]]:
        """Block until jobs are queued, then take up to ``max_items`` instances' worth (0: all), waiting up to
        ``max_delay_s`` after the oldest arrived for more. (id, offset, size, weight) per job; raises
        ChannelClosed once the master closed the channel and nothing is left."""
        _check(lib.ms_pop_batch(self._base, max_items, int(max_delay_s * 1e9), self._entries, QUEUE_CAPACITY,
                                self._count), "batch pop")
        return self._taken()

    def take_jobs(self) -> list[tuple[int, int, int, int]]:
        """Jobs queued and not taken by the worker (after it died)."""
        _check(lib.ms_take_jobs(self._base, self._entries, QUEUE_CAPACITY, self._count), "job take")
        return self._taken()

    def push_done(self, job_id: int, offset: int, size: int, event_fd: int) -> None:
        e = self._one
        e.id, e.offset, e.size, e.weight = job_id, offset, size, 0
        _check(lib.ms_push_done(self._base, e, event_fd), "done push")

    def pop_done(self) -> list[tuple[int, int, int, int]]:
        _check(lib.ms_pop_done(self._base, self._entries, QUEUE_CAPACITY, self._count), "done pop")
        return self._taken()

    def _taken(self) -> list[tuple[int, int, int, int]]:
        entries = self._entries
        return [(e.id, e.offset, e.size, e.weight) for e in (entries[i] for i in range(self._count[0]))]

    def close(self) -> None:
        """Tell the worker to finish the queued jobs and stop popping."""
        _check(lib.ms_channel_close(self._base), "channel close")

    def close_fd(self) -> None:
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
    return (f"cannot reserve {size >> 20} MB of shared memory for {owner}: {SHM_DIR} has {have}; lower "
            f"shm_size_mb in ServableStartConfig or give the machine (or container: --shm-size) more shared memory")
