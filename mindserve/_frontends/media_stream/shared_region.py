"""A client's shared-memory region of the media-stream extension: a file the client created in /dev/shm and
names in its stream descriptor (``handle_name``, ``length_bytes``), from which samples are read by reference
(``address_offset``, ``length_bytes``).

The region is the client's: the server opens the file read-only and never creates, writes, truncates or
unlinks it. It is opened without following links and must be a regular file at least ``length_bytes`` long.
Samples are copied out with ``pread``, not through a mapping: a client that truncates its file while the
stream runs then gets a short read and a clear error, where a mapping would fault the server (SIGBUS). Every
reference is checked (offset and length within the region, no overflow) before any byte is read; nothing
stays open after ``close``.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from mindserve._frontends.media_stream.frames import FrameError
from mindserve._frontends.shared_memory.client_file import (
    SHM_DIR,
    ClientFileError,
    open_client_file,
    read_exact,
    shm_name,
)

MAX_REGION_BYTES = 1 << 34  # 16 GiB: more is not a frame buffer
_OPEN_ERRORS = {
    "open": "the shared memory region named by handle_name cannot be opened: it must be a regular file in /dev/shm "
            "that the server may read",
    "not_regular": "the shared memory region named by handle_name is not a regular file",
    "small": "the shared memory region is {size} bytes, less than its length_bytes {length}",
}


class SharedRegion:
    """One stream's view of its client's region (see the module text)."""

    def __init__(self, fd: int, length: int):
        self._fd = fd
        self.length = length

    @classmethod
    def open(cls, handle_name: str, length_bytes: int, shm_dir: str = SHM_DIR) -> "SharedRegion":
        """Open the client's region; FrameError (its text never repeats the name) when it cannot be one."""
        if not 0 < length_bytes <= MAX_REGION_BYTES:
            raise FrameError("INVALID_ARGUMENT", f"the shared memory length_bytes {length_bytes} is not in 1 to "
                                                 f"{MAX_REGION_BYTES}")
        bare = shm_name(handle_name)
        if bare is None:
            raise FrameError("INVALID_ARGUMENT", "the shared memory handle_name must name a file directly in /dev/shm")
        try:  # (not own_only: the video-analytics module usually runs as another user)
            fd = open_client_file(os.path.join(shm_dir, bare), length_bytes, writable=False, own_only=False)
        except ClientFileError as error:
            raise FrameError("INVALID_ARGUMENT", _OPEN_ERRORS[error.kind].format(size=error.size,
                                                                                 length=length_bytes)) from None
        return cls(fd, length_bytes)

    def read(self, offset: int, length: int, expected: Optional[int] = None) -> np.ndarray:
        """The ``length`` bytes at ``offset`` of the region, copied out (uint8). FrameError when the reference
        reaches outside the region, when ``expected`` (a frame's size) differs, or when the file was cut short."""
        if self._fd < 0:
            raise FrameError("INVALID_ARGUMENT", "the shared memory region is closed")
        # compared as Python ints (unbounded): offset + length cannot wrap around
        if offset < 0 or length <= 0 or offset > self.length or length > self.length - offset:
            raise FrameError("INVALID_ARGUMENT", f"content_reference [{offset}, {offset} + {length}) reaches outside "
                                                 f"the shared memory region of {self.length} bytes")
        if expected is not None and length != expected:
            raise FrameError("INVALID_ARGUMENT", f"content_reference of {length} bytes, a frame is {expected}")
        out = read_exact(self._fd, offset, length)
        if out is None:
            raise FrameError("INVALID_ARGUMENT", f"the shared memory region ends before byte {offset + length}: "
                                                 f"the client cut its file short")
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
