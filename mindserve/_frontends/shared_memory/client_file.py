"""A client's file in /dev/shm as every shared-memory door opens, reads and writes it (system shared memory
regions, MindSpore's ``shm_data``, the media streams' frames): by an ``shm_open`` name only, without following
links, a regular file of the server's user (or of an owner the operator lists: ``client_shm_owners``) of at least
the size the client declared; bytes move with ``pread`` / ``pwrite`` and never through a mapping, so a client that
cuts its file short causes a short read, never a SIGBUS in the server. Reads may run on other threads than the
event loop (``ClientFile``): a file is closed only once the reads in progress are done, so that a descriptor
number is never reused under a read. The callers word the errors (and never repeat the client's name in them)."""

from __future__ import annotations

import os
import stat
import threading
from typing import AbstractSet, Callable, Iterable, Optional, TypeVar

import numpy as np

SHM_DIR = "/dev/shm"
OWN_PREFIX = "mindserve-"  # the server's own segments are never a client's (the workers' have no name at all)
MAX_NAME_BYTES = 255  # a client's name kept by the server (a key, a region's name): NAME_MAX, as a file's
LARGE_READ = 1 << 20  # a read of at least this many bytes runs on a thread, never on the event loop

T = TypeVar("T")


class ClientFileError(Exception):
    """Why a client's file cannot be used: ``kind`` is "open" (missing, a link, not readable), "not_regular",
    "not_owned", "small" (then ``size`` is the file's) or "closed" (the server closed it meanwhile)."""

    def __init__(self, kind: str, size: int = 0):
        super().__init__(kind)
        self.kind = kind
        self.size = size


def shm_name(key: str) -> Optional[str]:
    """The file name an ``shm_open`` name stands for in /dev/shm ("frames" or "/frames"), or None for anything
    else: other slashes, ``.`` or ``..``, NUL, over 255 bytes, or the server's own prefix."""
    bare = key[1:] if key.startswith("/") else key
    if (
        not bare
        or len(bare) > MAX_NAME_BYTES
        or "/" in bare
        or bare in (".", "..")
        or "\0" in bare
        or bare.startswith(OWN_PREFIX)
        or name_bytes(bare) > MAX_NAME_BYTES
    ):
        return None
    return bare


def name_bytes(name: str) -> int:
    """The length of a client's name in UTF-8 bytes (a lone surrogate, which JSON can carry, counts as 3)."""
    return len(name.encode("utf-8", "surrogatepass"))


def owner_set(extra: Iterable[int] = ()) -> frozenset[int]:
    """The owners whose files the server takes: its own user, and ``extra`` (uids)."""
    return frozenset({os.geteuid(), *extra})


def open_client_file(path: str, length: int, writable: bool, owners: AbstractSet[int]) -> int:
    """A descriptor of the client's file at ``path``, checked to be a regular file of one of ``owners`` (uids) of
    at least ``length`` bytes; ClientFileError otherwise."""
    try:
        fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        raise ClientFileError("open") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ClientFileError("not_regular")
        if info.st_uid not in owners:
            raise ClientFileError("not_owned")
        if info.st_size < length:
            raise ClientFileError("small", info.st_size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_into(fd: int, view: memoryview, offset: int) -> bool:
    """Fill ``view`` from the file at ``offset``; False when the file ends first."""
    got, size = 0, len(view)
    while got < size:
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            return False
        got += n
    return True


def read_exact(fd: int, offset: int, size: int) -> Optional[np.ndarray]:
    """``size`` bytes at ``offset`` of the file, copied out (uint8); None when the file ends before them."""
    out = np.empty(size, np.uint8)
    return out if _read_into(fd, out.data.cast("B"), offset) else None


def read_rows(fd: int, offset: int, rows: int, row: int, stride: int) -> Optional[np.ndarray]:
    """``rows`` rows of ``row`` bytes, the first at ``offset`` and each ``stride`` bytes after the one before,
    packed one after another (uint8, ``rows * row`` bytes): the gaps between rows are never read, so a hostile
    stride costs nothing. None when the file ends before them."""
    if stride == row or rows == 1:
        return read_exact(fd, offset, rows * row)
    out = np.empty(rows * row, np.uint8)
    view = out.data.cast("B")
    for k in range(rows):
        if not _read_into(fd, view[k * row : (k + 1) * row], offset + k * stride):
            return None
    return out


def write_all(fd: int, offset: int, data: memoryview) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


class ClientFile:
    """An open client file whose reads and writes may run on several threads: ``close`` marks it closed at once
    (later uses get ClientFileError "closed") and closes the descriptor when the last use in progress ends."""

    def __init__(self, fd: int):
        self._fd = fd
        self._lock = threading.Lock()
        self._busy = 0
        self._closing = False

    def use(self, function: Callable[[int], T]) -> T:
        """``function(fd)``, with the descriptor held open while it runs."""
        with self._lock:
            if self._closing:
                raise ClientFileError("closed")
            self._busy += 1
        try:
            return function(self._fd)
        finally:
            with self._lock:
                self._busy -= 1
                if self._closing and not self._busy:
                    self._close_now()

    def size(self) -> int:
        """The file's size now (-1 when it cannot be had)."""

        def size_of(fd: int) -> int:
            try:
                return os.fstat(fd).st_size
            except OSError:
                return -1

        return self.use(size_of)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            if not self._busy:
                self._close_now()

    def _close_now(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
