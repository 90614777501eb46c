"""Clients' system shared memory regions (KServe/Triton's system shared memory extension), safe by default.

A client on the same host creates a file in /dev/shm (``shm_open``), registers a part of it under a name
(``key``, ``offset``, ``byte_size``), and then names the region in tensors' parameters instead of sending their
bytes. What keeps this from being a way into the server (Triton's CVE-2025-23319/-23320/-23334):

- Off unless the server was started with it (``allow_client_shm``); registering goes through the access group
  ``shared-memory``.
- A key is an ``shm_open`` name: one optional leading slash, then a file name (no other slash, not ``.`` or
  ``..``), opened in /dev/shm without following links; it must be a regular file owned by the server's own user
  (or by an owner the operator lists, ``client_shm_owners``), and never one of the server's own segments
  (``mindserve-*``; the worker channels have no name at all).
- The file's size is checked at registration and again before every use; every offset and size is checked with
  Python's unbounded integers (no overflow); data moves with ``pread`` / ``pwrite``, never through a mapping,
  so a client that cuts its file short gets an error, never a SIGBUS in the server.
- A request reads at most what it could carry inline (the server's ``max_msg_mb_size``), checked before each read;
  reads of a megabyte or more run on the master's own threads (``OffLoop``), never on the event loop.
- Errors never repeat a key or a path; names and keys are at most 255 bytes; the number of regions and their
  total size are bounded.
- The server never creates, truncates or removes a client's file; an unregistered region is closed once the
  requests using it finish, and every region is closed at stop.
"""

from __future__ import annotations

import copy
import os
import threading
from typing import TYPE_CHECKING, Iterable, NamedTuple, Optional

import numpy as np

from mindserve._errors import AlreadyExists, InvalidInput, NotServed, clip
from mindserve._frontends.shared_memory.client_file import (
    MAX_NAME_BYTES,
    SHM_DIR,
    ClientFile,
    ClientFileError,
    name_bytes,
    open_client_file,
    owner_set,
    read_exact,
    shm_name,
    write_all,
)

if TYPE_CHECKING:
    from mindserve._frontends.off_loop import OffLoop

MAX_REGIONS = 64
MAX_TOTAL_BYTES = 1 << 36  # 64 GiB over all regions
BAD_KEY = (
    "the key names no shared memory the server may use: an shm_open name of a regular file in /dev/shm "
    "owned by the server's user or by an owner listed in client_shm_owners"
)


class RegionStatus(NamedTuple):
    name: str
    key: str
    offset: int
    byte_size: int


class Region:
    """One registered region: an open client file and the part of it registered."""

    def __init__(self, name: str, key: str, fd: int, offset: int, byte_size: int):
        self.name, self.key, self.offset, self.byte_size = name, key, offset, byte_size
        self._file = ClientFile(fd)
        self.users = 0  # requests holding it (see Lease)
        self.retired = False  # unregistered: closed once the last user leaves

    def _span(self, offset: int, size: int, what: str) -> int:
        """The file offset of [offset, offset + size) of the region, after checking it lies inside."""
        # compared as Python ints (unbounded): offset + size cannot wrap around
        if offset < 0 or size < 0 or offset > self.byte_size or size > self.byte_size - offset:
            raise InvalidInput(
                f"{what}: [{offset}, {offset} + {size}) reaches outside shared memory region "
                f"'{clip(self.name)}' of {self.byte_size} bytes"
            )
        if self._size() < self.offset + offset + size:
            raise InvalidInput(
                f"{what}: shared memory region '{clip(self.name)}' is no longer as large as it was "
                f"registered (its file was cut short)"
            )
        return self.offset + offset

    def _size(self) -> int:
        try:
            return self._file.size()
        except ClientFileError:
            return -1  # closed (unregistered at stop): reads as cut short

    def read(self, offset: int, size: int, what: str) -> np.ndarray:
        """``size`` bytes at ``offset`` of the region, copied out (uint8); nothing is read unless the whole span
        lies inside the region and its file."""
        at = self._span(offset, size, what)
        try:
            out = self._file.use(lambda fd: read_exact(fd, at, size))
        except ClientFileError:
            out = None
        if out is None:
            raise InvalidInput(f"{what}: shared memory region '{clip(self.name)}' ended before its data did")
        return out

    def write(self, offset: int, data: memoryview, what: str) -> None:
        """Write ``data`` at ``offset`` of the region."""
        at = self._span(offset, len(data), what)
        try:
            self._file.use(lambda fd: write_all(fd, at, data))
        except ClientFileError:
            raise InvalidInput(f"{what}: shared memory region '{clip(self.name)}' was closed") from None

    def close(self) -> None:
        self._file.close()


def check_name(name: str) -> None:
    """Refuse a region's name the server would not keep: none, or over MAX_NAME_BYTES (checked before anything
    else, so that a huge name costs nothing)."""
    if not name:
        raise InvalidInput("a shared memory region needs a name")
    if len(name) > MAX_NAME_BYTES or name_bytes(name) > MAX_NAME_BYTES:
        raise InvalidInput(
            f"a shared memory region's name is at most {MAX_NAME_BYTES} bytes, this one is {name_bytes(name)}"
        )


class _Registry:
    """What every server of one master shares: the registered regions and the owners whose files it takes."""

    def __init__(self) -> None:
        self.regions: dict[str, Region] = {}
        self.lock = threading.Lock()  # registration may come from several loops' threads (REST, gRPC: one loop)
        self.owners = owner_set()


class ClientRegions:
    """The regions registered with one master (every door that allows client shared memory shares them), as one
    server sees them: ``for_server`` gives each server its view, with the bound on what one request may read
    (its ``max_msg_mb_size``) and the threads that run large reads."""

    def __init__(self, shm_dir: str = SHM_DIR, max_regions: int = MAX_REGIONS, max_bytes: int = MAX_TOTAL_BYTES):
        self._dir = shm_dir
        self._max_regions, self._max_bytes = max_regions, max_bytes
        self._registry = _Registry()
        self.max_read: Optional[int] = None  # bytes one request may read from shared memory (None: unbounded)
        self.off_loop: Optional[OffLoop] = None  # where large reads run (None: on the caller's thread)

    def for_server(self, max_read: int, off_loop: Optional[OffLoop]) -> "ClientRegions":
        """The same regions, as a server with requests of at most ``max_read`` bytes sees them."""
        view = copy.copy(self)  # shares the registry: regions registered through one server serve every server
        view.max_read, view.off_loop = max_read, off_loop
        return view

    @property
    def owners(self) -> frozenset[int]:
        """The uids whose files clients may name: the server's own, and those the operator listed."""
        return self._registry.owners

    def set_owners(self, uids: Iterable[int]) -> None:
        """Take files of these users too (besides the server's own); replaces the earlier list. Regions already
        registered stay."""
        self._registry.owners = owner_set(uids)

    def _open(self, name: str, key: str, offset: int, byte_size: int) -> Region:
        """A region of the client's file ``key``, checked (see the module text); its errors never name the key."""
        bare = shm_name(key)
        if bare is None:
            raise InvalidInput(BAD_KEY)
        try:
            fd = open_client_file(os.path.join(self._dir, bare), offset + byte_size, writable=True, owners=self.owners)
        except ClientFileError as error:
            if error.kind != "small":
                raise InvalidInput(BAD_KEY) from None
            raise InvalidInput(
                f"shared memory region '{clip(name)}': its file holds {error.size} bytes, less than "
                f"offset {offset} + byte_size {byte_size}"
            ) from None
        return Region(name, key, fd, offset, byte_size)

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        check_name(name)
        if offset < 0 or byte_size <= 0 or offset >= 1 << 63 or byte_size >= 1 << 63:
            raise InvalidInput(
                f"shared memory region '{clip(name)}': offset {offset} and byte_size {byte_size} should "
                f"be a non-negative offset and a positive size"
            )
        registry = self._registry
        with registry.lock:
            if name in registry.regions:
                raise AlreadyExists(f"shared memory region '{clip(name)}' is already registered")
            if len(registry.regions) >= self._max_regions:
                raise InvalidInput(
                    f"{self._max_regions} shared memory regions are registered, the most this server "
                    f"takes: unregister one first"
                )
            total = sum(r.byte_size for r in registry.regions.values())
            if total + byte_size > self._max_bytes:
                raise InvalidInput(
                    f"shared memory region '{clip(name)}' of {byte_size} bytes would bring the "
                    f"registered regions past {self._max_bytes} bytes"
                )
            registry.regions[name] = self._open(name, key, offset, byte_size)

    def unregister(self, name: str = "") -> None:
        """Unregister one region ("" every one); a region in use closes when its requests finish. Unknown names
        are no error (as in Triton)."""
        registry = self._registry
        with registry.lock:
            names = [name] if name else list(registry.regions)
            for found in names:
                region = registry.regions.pop(found, None)
                if region is not None:
                    region.retired = True
                    if not region.users:
                        region.close()

    def status(self, name: str = "") -> list[RegionStatus]:
        registry = self._registry
        with registry.lock:
            if name and name not in registry.regions:
                raise NotServed(f"Unable to find system shared memory region: '{clip(name)}'")
            chosen = [registry.regions[name]] if name else list(registry.regions.values())
            return [RegionStatus(r.name, r.key, r.offset, r.byte_size) for r in chosen]

    def lease(self) -> "Lease":
        return Lease(self)

    def _acquire(self, name: str) -> Region:
        registry = self._registry
        with registry.lock:
            region = registry.regions.get(name)
            if region is None:
                raise InvalidInput(f"Unable to find shared memory region: '{clip(name)}'")
            region.users += 1
            return region

    def _release(self, region: Region) -> None:
        with self._registry.lock:
            region.users -= 1
            if region.retired and not region.users:
                region.close()

    def close(self) -> None:
        """Close every region (at stop); requests still running see them closed."""
        self.unregister()


class Lease:
    """The regions one request uses, held from when it names them until it is answered (``release``), and the
    bytes it has read from them: at most ``max_read`` in all, checked before each read."""

    def __init__(self, regions: ClientRegions):
        self._regions = regions
        self._held: list[Region] = []
        self._opened: dict[str, Region] = {}  # regions named by key for this request alone (MindSpore's form)
        self.max_read = regions.max_read
        self.off_loop = regions.off_loop
        self.read_bytes = 0
        # a request cancelled while a thread makes its inputs is released on the loop meanwhile: what the thread
        # opens after that is closed at once rather than kept
        self._lock = threading.Lock()
        self._released = False

    def get(self, name: str) -> Region:
        region = self._regions._acquire(name)
        with self._lock:
            if not self._released:
                self._held.append(region)
                return region
        self._regions._release(region)
        raise InvalidInput("the request ended before its shared memory was read")

    def by_key(self, key: str, byte_size: int) -> Region:
        """The client's shared memory ``key`` of ``byte_size`` bytes (MindSpore's ShmTensorData names memory by
        key, unregistered), opened with the same checks as a registration, for this request only."""
        if not 0 < byte_size < 1 << 63:
            raise InvalidInput(f"shared memory bytes_size {byte_size} should be positive")
        region = self._opened.get(key)
        if region is not None:
            if region.byte_size != byte_size:
                raise InvalidInput("one shared memory key is given with two different bytes_size")
            return region
        region = self._regions._open("shm_data", key, 0, byte_size)
        with self._lock:
            if not self._released:
                self._opened[key] = region
                return region
        region.close()
        raise InvalidInput("the request ended before its shared memory was read")

    def check_read(self, size: int, what: str) -> None:
        """Refuse, before anything is read, a read that would bring the request past ``max_read`` bytes."""
        if self.max_read is not None and self.read_bytes + size > self.max_read:
            raise InvalidInput(
                f"{what}: {size} bytes in shared memory would bring the request to "
                f"{self.read_bytes + size} bytes, more than the {self.max_read} a request may carry "
                f"on this server (max_msg_mb_size)"
            )

    def read(self, region: Region, offset: int, size: int, what: str) -> np.ndarray:
        """``size`` bytes at ``offset`` of ``region``, counted against the request's bound (checked first)."""
        self.check_read(size, what)
        out = region.read(offset, size, what)
        self.read_bytes += size
        return out

    def release(self) -> None:
        with self._lock:
            self._released = True
            held, self._held = self._held, []
            opened, self._opened = self._opened, {}
        for region in held:
            self._regions._release(region)
        for region in opened.values():
            region.close()
