"""A client's file in /dev/shm as every shared-memory door opens, reads and writes it (system shared memory
regions, MindSpore's ``shm_data``, the media streams' frames): by an ``shm_open`` name only, without following
links, a regular file of at least the size the client declared; bytes move with ``pread`` / ``pwrite`` and never
through a mapping, so a client that cuts its file short causes a short read, never a SIGBUS in the server. The
callers word the errors (and never repeat the client's name in them)."""
from __future__ import annotations

import os
import stat
from typing import Optional

import numpy as np

SHM_DIR = "/dev/shm"
OWN_PREFIX = "mindserve-"  # the server's own segments are never a client's (the workers' have no name at all)


class ClientFileError(Exception):
    """Why a client's file cannot be used: ``kind`` is "open" (missing, a link, not readable), "not_regular",
    "not_owned" or "small" (then ``size`` is the file's)."""

    def __init__(self, kind: str, size: int = 0):
        super().__init__(kind)
        self.kind = kind
        self.size = size


def shm_name(key: str) -> Optional[str]:
    """The file name an ``shm_open`` name stands for in /dev/shm ("frames" or "/frames"), or None for anything
    else: other slashes, ``.`` or ``..``, NUL, over 255 bytes, or the server's own prefix."""
    bare = key[1:] if key.startswith("/") else key
    if not bare or "/" in bare or bare in (".", "..") or "\0" in bare or len(bare) > 255 \
            or bare.startswith(OWN_PREFIX):
        return None
    return bare


def open_client_file(path: str, length: int, writable: bool, own_only: bool) -> int:
    """A descriptor of the client's file at ``path``, checked to be a regular file (of the server's user, with
    ``own_only``) of at least ``length`` bytes; ClientFileError otherwise."""
    try:
        fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        raise ClientFileError("open") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ClientFileError("not_regular")
        if own_only and info.st_uid != os.geteuid():
            raise ClientFileError("not_owned")
        if info.st_size < length:
            raise ClientFileError("small", info.st_size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_exact(fd: int, offset: int, size: int) -> Optional[np.ndarray]:
    """``size`` bytes at ``offset`` of the file, copied out (uint8); None when the file ends before them."""
    out = np.empty(size, np.uint8)
    view, got = out.data, 0
    while got < size:
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            return None
        got += n
    return out


def write_all(fd: int, offset: int, data: memoryview) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)
