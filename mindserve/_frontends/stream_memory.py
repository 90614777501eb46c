"""One memory budget for everything the master's streams hold: the answers of ModelStreamInfer waiting to be
sent, and the frames of media streams read and not yet run (their decoded size counted). Over all gRPC servers
of the master and all their streams, these bytes stay within ``max_stream_memory_mb`` (default 256): past it,
streams stop *reading* (gRPC's flow control then holds their clients back) instead of growing.

How a stream uses it (see ``grpc/ordered.py``, which reads every stream):

- A stream reads its next message only while the budget, and its own share, have room. The message's bytes are
  then counted at once (they exist: a charge never waits).
- Before it runs the message, it reserves what that will make it hold, and waits (reading nothing more) while
  that does not fit: a ModelStreamInfer request, its answer, estimated as the largest of the stream's (for its
  first request the largest of the server's recent answers, and the stream's whole share when none is known,
  so that a stream cannot start many requests before the first answer tells their size); a media frame, what
  reading it out of the client's region and decoding it takes (an encoded image's size comes from its header,
  which Pillow reads without decoding; the decoder's own copies counted while it decodes).
- Each reservation is a :class:`Ticket`; it follows what it counts: resized to the answer once it is made, or
  to the decoded frame, and released when the answer has been handed to gRPC, when the frame's batch has run,
  or when the stream ends in any way (``StreamShare.close``, in a ``finally`` of every stream, cancellation
  included).

Why it cannot deadlock: a stream waits only for memory, and everything counted is released by progress that
needs no memory: an answer by the client reading it, a frame by its batch running. What a stream holds back of
its own accord, a media stream's incomplete batch, is started (``StreamShare.flush``) before anyone waits: its
own stream's when its share is short, every stream's when the budget is. A reservation is never more than one
stream's share, and waiters are served in order (a large one is not passed over for ever by small ones; one kept
back by its own stream's share holds up no other), so a stream holding nothing always gets its turn once others
release.

Bounds: no stream holds more than ``per_stream`` (half the budget), so a client that never reads holds at most
that, and one stream alone never fills the budget; with the budget full, every stream waits to read until
something is released (a client that reads, a stream that ends). A single frame that needs more than a stream's
share is refused (RESOURCE_EXHAUSTED, saying so) rather than waited for. What may go past the budget: the one
message each stream has just read (gRPC has received it already) and an answer larger than estimated; the
stream then reads nothing more until it is back within its share.

The same object carries the drain: ``drain`` tells every stream to stop reading (what it had accepted is still
answered, then the stream ends UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable, Optional

from mindserve import _defaults

DEFAULT_MAX_STREAM_MEMORY_MB = _defaults.MAX_STREAM_MEMORY_MB
MAX_STREAM_MEMORY_MB = 1 << 20  # a setting past a terabyte is a mistake


class StreamMemory:
    """The master's budget (``limit`` bytes) and the bytes its streams hold now (``used``)."""

    def __init__(self, limit: int = DEFAULT_MAX_STREAM_MEMORY_MB << 20):
        self.limit = limit
        self.used = 0
        self.draining = False
        self._waiters: deque[_Waiter] = deque()
        self._drain_callbacks: list[Callable[[], None]] = []
        self._flushable: set[StreamShare] = set()  # streams that hold frames back (see StreamShare.set_flush)

    @property
    def per_stream(self) -> int:
        """The most one stream may hold: half the budget."""
        return max(1, self.limit // 2)

    def set_limit(self, limit: int) -> None:
        """A new budget, in bytes; waiters that now fit go on."""
        self.limit = limit
        self._grant()

    def share(self) -> "StreamShare":
        """A new stream's part of the budget."""
        return StreamShare(self)

    def drain(self) -> None:
        """The server drains: every stream stops reading (called on the loop, once the drain starts)."""
        self.draining = True
        callbacks, self._drain_callbacks = self._drain_callbacks, []
        for callback in callbacks:
            callback()

    def on_drain(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when the drain starts (now if it has); returns what unregisters it."""
        if self.draining:
            callback()
            return lambda: None
        self._drain_callbacks.append(callback)

        def unregister() -> None:
            if callback in self._drain_callbacks:
                self._drain_callbacks.remove(callback)

        return unregister

    def _fits(self, waiter: "_Waiter") -> tuple[bool, bool]:
        """(within its stream's share, within the budget)."""
        return (waiter.share.held + waiter.nbytes <= self.per_stream, self.used + waiter.nbytes <= self.limit)

    def _grant(self) -> None:
        """Grant the waiters that fit, in order; one that does not fit the budget stops the others behind it (so
        that it is served next), one kept back only by its own stream's share does not."""
        for waiter in list(self._waiters):
            if waiter.future.done():
                self._waiters.remove(waiter)
                continue
            own, budget = self._fits(waiter)
            if not own:
                continue  # its stream must first release some of its own
            if not budget:
                return
            self._waiters.remove(waiter)
            waiter.ticket._add(waiter.nbytes)
            waiter.future.set_result(None)


class _Waiter:
    __slots__ = ("share", "ticket", "nbytes", "future")

    def __init__(self, ticket: "Ticket", nbytes: int, future: asyncio.Future):
        self.share = ticket.share
        self.ticket = ticket
        self.nbytes = nbytes
        self.future = future


class StreamShare:
    """What one stream holds of the budget (``held``), as tickets; ``close`` gives it all back."""

    def __init__(self, memory: StreamMemory):
        self.memory = memory
        self.held = 0
        self.closed = False
        self.flush: Optional[Callable[[], None]] = None

    def set_flush(self, flush: Callable[[], None]) -> None:
        """What starts the frames this stream holds back (a media stream's incomplete batch): called when it or
        another stream must wait for memory, so that held-back frames never keep a stream waiting."""
        self.flush = flush
        self.memory._flushable.add(self)

    def ticket(self) -> "Ticket":
        return Ticket(self)

    def close(self) -> int:
        """The stream has ended: everything it held is released (its tickets count nothing from now on); the
        bytes released."""
        if self.closed:
            return 0
        self.closed = True
        released, self.held = self.held, 0
        memory = self.memory
        memory._flushable.discard(self)
        memory.used -= released
        for waiter in [w for w in memory._waiters if w.share is self]:
            memory._waiters.remove(waiter)
            waiter.future.cancel()
        memory._grant()
        return released


class Ticket:
    """Bytes one thing of a stream holds (a message, an answer, a frame): grown (waiting for room), charged or
    resized (at once: bytes that exist already), released (once, or again harmlessly)."""

    def __init__(self, share: StreamShare):
        self.share = share
        self.nbytes = 0

    def _add(self, delta: int) -> None:
        self.nbytes += delta
        self.share.held += delta
        self.share.memory.used += delta

    async def grow_to(self, nbytes: int) -> None:
        """Hold ``nbytes`` (at most the stream's share), waiting until it fits the stream's share and the budget.
        Before it waits, the incomplete batches that stand in its way are started (``StreamShare.flush``): its own
        stream's, and every stream's when the budget is what is short."""
        share, memory = self.share, self.share.memory
        nbytes = min(nbytes, memory.per_stream)
        delta = nbytes - self.nbytes
        if delta <= 0 or share.closed:
            return
        if not memory._waiters and share.held + delta <= memory.per_stream and memory.used + delta <= memory.limit:
            self._add(delta)  # the common case: room, and nobody waiting before it
            return
        waiter = _Waiter(self, delta, asyncio.get_running_loop().create_future())
        memory._waiters.append(waiter)
        memory._grant()
        if waiter.future.done():
            return
        own, _ = memory._fits(waiter)
        for holder in list(memory._flushable) if own else [share]:
            if holder.flush is not None:
                holder.flush()
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter in memory._waiters:
                memory._waiters.remove(waiter)
                memory._grant()  # it may have held up others behind it
            raise

    def charge_to(self, nbytes: int) -> None:
        """Hold at least ``nbytes``, at once (bytes that exist: a message read)."""
        if nbytes > self.nbytes and not self.share.closed:
            self._add(nbytes - self.nbytes)

    def resize(self, nbytes: int) -> None:
        """Hold exactly ``nbytes`` from now on, at once (an answer made, a frame decoded)."""
        if self.share.closed:
            return
        delta = nbytes - self.nbytes
        self._add(delta)
        if delta < 0:
            self.share.memory._grant()

    def release(self) -> None:
        self.resize(0)


_server_memory = StreamMemory()


def server_memory() -> StreamMemory:
    """The budget of this process's master (one master per process: see ``mindserve._master``)."""
    return _server_memory


def install(memory: StreamMemory) -> None:
    """Make ``memory`` the budget of the process's streams (each new master installs its own)."""
    global _server_memory
    _server_memory = memory
