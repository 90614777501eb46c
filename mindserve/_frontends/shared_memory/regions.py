"""Clients' system shared memory regions (KServe/Triton's system shared memory extension), safe by default.

A client on the same host creates a file in /dev/shm (``shm_open``), registers a part of it under a name
(``key``, ``offset``, ``byte_size``), and then names the region in tensors' parameters instead of sending their
bytes. What keeps this from being a way into the server (Triton's CVE-2025-23319/-23320/-23334):

- Off unless the server was started with it (``allow_client_shm``); registering goes through the access group
  ``shared-memory``.
- A key is an ``shm_open`` name: one optional leading slash, then a file name (no other slash, not ``.`` or
  ``..``), opened in /dev/shm without following links; it must be a regular file owned by the server's own user,
  and never one of the server's own segments (``mindserve-*``; the worker channels have no name at all).
- The file's size is checked at registration and again before every use; every offset and size is checked with
  Python's unbounded integers (no overflow); data moves with ``pread`` / ``pwrite``, never through a mapping,
  so a client that cuts its file short gets an error, never a SIGBUS in the server.
- Errors never repeat a key or a path; the number of regions and their total size are bounded.
- The server never creates, truncates or removes a client's file; an unregistered region is closed once the
  requests using it finish, and every region is closed at stop.
"""
from __future__ import annotations

import os
import threading
from typing import NamedTuple

import numpy as np

from mindserve._errors import AlreadyExists, InvalidInput, NotServed, clip
from mindserve._frontends.shared_memory.client_file import (
    SHM_DIR,
    ClientFileError,
    open_client_file,
    read_exact,
    shm_name,
    write_all,
)

MAX_REGIONS = 64
MAX_TOTAL_BYTES = 1 << 36  # 64 GiB over all regions
BAD_KEY = ("the key names no shared memory the server may use: an shm_open name of a regular file in /dev/shm "
           "owned by the server's user")


class RegionStatus(NamedTuple):
    name: str
    key: str
    offset: int
    byte_size: int


class Region:
    """One registered region: an open descriptor of the client's file and the part of it registered."""

    def __init__(self, name: str, key: str, fd: int, offset: int, byte_size: int):
        self.name, self.key, self.offset, self.byte_size = name, key, offset, byte_size
        self._fd = fd
        self.users = 0  # requests holding it (see Lease)
        self.retired = False  # unregistered: closed once the last user leaves

    def _span(self, offset: int, size: int, what: str) -> int:
        """The file offset of [offset, offset + size) of the region, after checking it lies inside."""
        if offset < 0 or size < 0 or offset > self.byte_size or size > self.byte_size - offset:
            raise InvalidInput(f"{what}: [{offset}, {offset} + {size}) reaches outside shared memory region "
                               f"'{clip(self.name)}' of {self.byte_size} bytes")
        try:
            file_size = os.fstat(self._fd).st_size
        except OSError:
            file_size = -1
        if file_size < self.offset + offset + size:
            raise InvalidInput(f"{what}: shared memory region '{clip(self.name)}' is no longer as large as it was "
                               f"registered (its file was cut short)")
        return self.offset + offset

    def read(self, offset: int, size: int, what: str) -> np.ndarray:
        """``size`` bytes at ``offset`` of the region, copied out (uint8)."""
        at = self._span(offset, size, what)
        out = read_exact(self._fd, at, size)
        if out is None:
            raise InvalidInput(f"{what}: shared memory region '{clip(self.name)}' ended before its data did")
        return out

    def write(self, offset: int, data: memoryview, what: str) -> None:
        """Write ``data`` at ``offset`` of the region."""
        write_all(self._fd, self._span(offset, len(data), what), data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ClientRegions:
    """The regions registered with one master (every door that allows client shared memory shares them)."""

    def __init__(self, shm_dir: str = SHM_DIR, max_regions: int = MAX_REGIONS, max_bytes: int = MAX_TOTAL_BYTES):
        self._dir = shm_dir
        self._max_regions, self._max_bytes = max_regions, max_bytes
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()  # registration may come from several loops' threads (REST, gRPC: one loop)

    def _open(self, name: str, key: str, offset: int, byte_size: int) -> Region:
        """A region of the client's file ``key``, checked (see the module text); its errors never name the key."""
        bare = shm_name(key)
        if bare is None:
            raise InvalidInput(BAD_KEY)
        try:
            fd = open_client_file(os.path.join(self._dir, bare), offset + byte_size, writable=True, own_only=True)
        except ClientFileError as error:
            if error.kind != "small":
                raise InvalidInput(BAD_KEY) from None
            raise InvalidInput(f"shared memory region '{clip(name)}': its file holds {error.size} bytes, less than "
                               f"offset {offset} + byte_size {byte_size}") from None
        return Region(name, key, fd, offset, byte_size)

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise InvalidInput("a shared memory region needs a name")
        if offset < 0 or byte_size <= 0 or offset >= 1 << 63 or byte_size >= 1 << 63:
            raise InvalidInput(f"shared memory region '{clip(name)}': offset {offset} and byte_size {byte_size} should "
                               f"be a non-negative offset and a positive size")
        with self._lock:
            if name in self._regions:
                raise AlreadyExists(f"shared memory region '{clip(name)}' is already registered")
            if len(self._regions) >= self._max_regions:
                raise InvalidInput(f"{self._max_regions} shared memory regions are registered, the most this server "
                                   f"takes: unregister one first")
            total = sum(r.byte_size for r in self._regions.values())
            if total + byte_size > self._max_bytes:
                raise InvalidInput(f"shared memory region '{clip(name)}' of {byte_size} bytes would bring the "
                                   f"registered regions past {self._max_bytes} bytes")
            self._regions[name] = self._open(name, key, offset, byte_size)

    def unregister(self, name: str = "") -> None:
        """Unregister one region ("" every one); a region in use closes when its requests finish. Unknown names
        are no error (as in Triton)."""
        with self._lock:
            names = [name] if name else list(self._regions)
            for found in names:
                region = self._regions.pop(found, None)
                if region is not None:
                    region.retired = True
                    if not region.users:
                        region.close()

    def status(self, name: str = "") -> list[RegionStatus]:
        with self._lock:
            if name and name not in self._regions:
                raise NotServed(f"Unable to find system shared memory region: '{clip(name)}'")
            chosen = [self._regions[name]] if name else list(self._regions.values())
            return [RegionStatus(r.name, r.key, r.offset, r.byte_size) for r in chosen]

    def lease(self) -> "Lease":
        return Lease(self)

    def _acquire(self, name: str) -> Region:
        with self._lock:
            region = self._regions.get(name)
            if region is None:
                raise InvalidInput(f"Unable to find shared memory region: '{clip(name)}'")
            region.users += 1
            return region

    def _release(self, region: Region) -> None:
        with self._lock:
            region.users -= 1
            if region.retired and not region.users:
                region.close()

    def close(self) -> None:
        """Close every region (at stop); requests still running see them closed."""
        self.unregister()


class Lease:
    """The regions one request uses, held from when it names them until it is answered (``release``)."""

    def __init__(self, regions: ClientRegions):
        self._regions = regions
        self._held: list[Region] = []

        self._opened: dict[str, Region] = {}  # regions named by key for this request alone (MindSpore's form)

    def get(self, name: str) -> Region:
        region = self._regions._acquire(name)
        self._held.append(region)
        return region

    def by_key(self, key: str, byte_size: int) -> Region:
        """The client's shared memory ``key`` of ``byte_size`` bytes (MindSpore's ShmTensorData names memory by
        key, unregistered), opened with the same checks as a registration, for this request only."""
        if not 0 < byte_size < 1 << 63:
            raise InvalidInput(f"shared memory bytes_size {byte_size} should be positive")
        region = self._opened.get(key)
        if region is None or region.byte_size != byte_size:
            if region is not None:
                raise InvalidInput("one shared memory key is given with two different bytes_size")
            region = self._opened[key] = self._regions._open("shm_data", key, 0, byte_size)
        return region

    def release(self) -> None:
        held, self._held = self._held, []
        for region in held:
            self._regions._release(region)
        opened, self._opened = self._opened, {}
        for region in opened.values():
            region.close()
