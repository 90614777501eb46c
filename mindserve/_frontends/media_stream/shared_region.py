"""A client's shared-memory region of the media-stream extension: a file the client created in /dev/shm and
names in its stream descriptor (``handle_name``, ``length_bytes``), from which frames are read by reference
(``address_offset``, ``length_bytes``). Only on a server started with client shared memory
(``allow_client_shm``), as every form of it.

The region is the client's: the server opens the file read-only and never creates, writes, truncates or
unlinks it. It is opened without following links and must be a regular file of the server's user (or of an
owner the operator lists, ``client_shm_owners``: the video-analytics module often runs as another user), at
least ``length_bytes`` long. Frames are copied out with ``pread``, not through a mapping: a client that
truncates its file while the stream runs then gets a short read and a clear error, where a mapping would fault
the server (SIGBUS). Every reference is checked (offset and length within the region, no overflow, a frame's
size) before any byte is read, and what is read is bounded by what the frame uses: a RAW frame's rows without
the gaps between them (a hostile stride costs nothing), at most what a message may carry (``max_read``, the
server's ``max_msg_mb_size``). Nothing stays open after ``close``; a read in progress on another thread keeps
the file open until it ends.
"""

from __future__ import annotations

import os
from typing import AbstractSet, Optional

import numpy as np

from mindserve._frontends.media_stream.frames import FrameError, FrameFormat, expected_length
from mindserve._frontends.shared_memory.client_file import (
    SHM_DIR,
    ClientFile,
    ClientFileError,
    open_client_file,
    read_exact,
    read_rows,
    shm_name,
)

MAX_REGION_BYTES = 1 << 34  # 16 GiB: more is not a frame buffer
_OPEN_ERRORS = {
    "open": "the shared memory region named by handle_name cannot be opened: it must be a regular file in /dev/shm "
    "that the server may read",
    "not_regular": "the shared memory region named by handle_name is not a regular file",
    "not_owned": "the shared memory region named by handle_name is owned by a user the server does not take files "
    "of: its own, or one listed in client_shm_owners",
    "small": "the shared memory region is {size} bytes, less than its length_bytes {length}",
}


class SharedRegion:
    """One stream's view of its client's region (see the module text): frames of ``frame_format`` (the stream's,
    with its stride) are read from it."""

    def __init__(self, file: ClientFile, length: int, frame_format: FrameFormat, max_read: Optional[int] = None):
        self._file = file
        self.length = length
        self.format = frame_format
        self.max_read = max_read

    @classmethod
    def open(
        cls,
        handle_name: str,
        length_bytes: int,
        frame_format: FrameFormat,
        owners: AbstractSet[int],
        max_read: Optional[int] = None,
        shm_dir: str = SHM_DIR,
    ) -> "SharedRegion":
        """Open the client's region, a file of one of ``owners`` (uids); FrameError (its text never repeats the
        name) when it cannot be one."""
        if not 0 < length_bytes <= MAX_REGION_BYTES:
            raise FrameError(
                "INVALID_ARGUMENT", f"the shared memory length_bytes {length_bytes} is not in 1 to {MAX_REGION_BYTES}"
            )
        bare = shm_name(handle_name)
        if bare is None:
            raise FrameError("INVALID_ARGUMENT", "the shared memory handle_name must name a file directly in /dev/shm")
        try:
            fd = open_client_file(os.path.join(shm_dir, bare), length_bytes, writable=False, owners=owners)
        except ClientFileError as error:
            raise FrameError(
                "INVALID_ARGUMENT", _OPEN_ERRORS[error.kind].format(size=error.size, length=length_bytes)
            ) from None
        return cls(ClientFile(fd), length_bytes, frame_format, max_read)

    @property
    def frame_format(self) -> FrameFormat:
        """The format of what ``read`` returns: a RAW frame's rows packed, without padding."""
        return self.format.packed()

    def check(self, offset: int, length: int) -> int:
        """The bytes reading the frame at ``content_reference`` (``offset``, ``length``) takes, after checking it
        (FrameError otherwise): inside the region, the size of a frame of the format, and within ``max_read``."""
        # compared as Python ints (unbounded): offset + length cannot wrap around
        if offset < 0 or length <= 0 or offset > self.length or length > self.length - offset:
            raise FrameError(
                "INVALID_ARGUMENT",
                f"content_reference [{offset}, {offset} + {length}) reaches outside "
                f"the shared memory region of {self.length} bytes",
            )
        expected = expected_length(self.format)
        if expected is not None and length != expected:
            raise FrameError("INVALID_ARGUMENT", f"content_reference of {length} bytes, a frame is {expected}")
        size = self.format.height * self.format.row_bytes if expected is not None else length
        if self.max_read is not None and size > self.max_read:
            raise FrameError(
                "OUT_OF_RANGE",
                f"a frame of {size} bytes in shared memory is more than the "
                f"{self.max_read} a message may carry on this server (max_msg_mb_size)",
            )
        return size

    def read(self, offset: int, length: int) -> np.ndarray:
        """The frame at ``content_reference`` (``offset``, ``length``), copied out (uint8) after ``check``: a RAW
        frame's rows only, packed (``frame_format``), or an encoded frame's bytes. FrameError when the reference
        is refused, or when the file was cut short or the region closed."""
        self.check(offset, length)
        fmt = self.format
        if expected_length(fmt) is not None:

            def read(fd: int) -> Optional[np.ndarray]:
                return read_rows(fd, offset, fmt.height, fmt.row_bytes, fmt.stride)
        else:

            def read(fd: int) -> Optional[np.ndarray]:
                return read_exact(fd, offset, length)

        try:
            out = self._file.use(read)
        except ClientFileError:
            raise FrameError("INVALID_ARGUMENT", "the shared memory region is closed") from None
        if out is None:
            raise FrameError(
                "INVALID_ARGUMENT",
                f"the shared memory region ends before byte {offset + length}: the client cut its file short",
            )
        return out

    def close(self) -> None:
        self._file.close()
