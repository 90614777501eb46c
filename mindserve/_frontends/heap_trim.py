"""Giving memory back after large requests.

A request of many megabytes passes through several buffers in the master (gRPC's, the request bytes, the reply
block copied out of shared memory, the reply). glibc's malloc keeps what they freed for reuse rather than return
it to the system, and raises its mmap threshold after freeing a large block, so one large request would leave
the master some hundred megabytes larger for good. After a large request, once traffic lets it (a second later,
once at most per second), ``malloc_trim`` returns the free memory; elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from typing import Any, Callable, Optional

from mindserve._frontends.off_loop import OffLoop

log = logging.getLogger("mindserve")

LARGE_BYTES = 1 << 20  # a request whose request and reply bytes add up to this much is followed by a trim
TRIM_DELAY_S = 1.0


M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
MASTER_ARENAS = 2


def _glibc_trim() -> Optional[Callable[[int], Any]]:
    """glibc's malloc_trim, after limiting the master's malloc arenas: with one arena per thread (gRPC's, the
    loop's, the off-loop threads'), what a large request freed is spread over arenas that are rarely trimmed
    whole; None elsewhere than glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim, mallopt = libc.malloc_trim, libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt(M_ARENA_MAX, MASTER_ARENAS)
    return trim


class HeapTrimmer:
    """Trims the heap (on an off-loop thread) a moment after large requests."""

    def __init__(self, off_loop: OffLoop):
        self._off_loop = off_loop
        self._trim = _glibc_trim()
        self._scheduled = False
        self._timer: Optional[asyncio.TimerHandle] = None
        self._task: Optional[asyncio.Task] = None

    def note(self, nbytes: int) -> None:
        """A request of ``nbytes`` (request and reply) was answered; called on the event loop."""
        if nbytes < LARGE_BYTES or self._scheduled or self._trim is None:
            return
        self._scheduled = True
        self._timer = asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._start_trim)

    def _start_trim(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run_trim(), name="mindserve-heap-trim")

    async def close(self) -> None:
        """Cancel a trim to come, and wait for one under way (at stop: no task is left behind)."""
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run_trim(self) -> None:
        trim = self._trim
        try:
            if trim is not None:
                await self._off_loop.run(trim, 0)
        except Exception:  # never a reason to disturb serving
            log.debug("malloc_trim failed", exc_info=True)
        finally:
            self._scheduled = False
