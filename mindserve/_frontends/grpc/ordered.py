"""What the streaming doors share: a stream's requests run concurrently, their answers go back in the order the
requests came, and the reading is held back, so that a client sending faster than it reads is held back by
gRPC's flow control (the next request is read only when there is room), never buffered without bound:

- at most ``limit`` requests of a stream are in progress at once (a slot each, freed when its answer is sent);
- what the stream holds stays within its share of the server's stream memory (``stream_memory``): the reader
  reads only while the budget has room, and reserves what a message will make it hold before it runs it
  (waiting, and reading nothing more, while that does not fit);
- once the server drains (``StreamMemory.drain``), the reader stops at once, even in the middle of a wait.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Union

from mindserve._frontends.stream_memory import StreamShare, Ticket


class OrderedAnswers:
    """Answers of one stream: ``add`` each request's answer (an awaitable, or a value ready now) after ``reserve``
    gave it a slot; ``answers`` yields them in order as they complete, freeing the slots; ``finish`` says that
    no more will come. ``close`` cancels whatever is still running."""

    def __init__(self, limit: int):
        self._slots = asyncio.Semaphore(limit)
        self._pending: deque[tuple[Union[asyncio.Future, Any], bool]] = deque()  # (answer, holds a slot)
        self._arrived = asyncio.Event()
        self._finished = False

    async def reserve(self) -> None:
        await self._slots.acquire()

    def add(self, answer: Union[Awaitable, Any], slot: bool = True) -> None:
        """An answer to come, after those added before; ``slot=False``: one added without ``reserve`` (what a
        stream starts of its own accord, not for a request read)."""
        if asyncio.iscoroutine(answer):
            answer = asyncio.get_running_loop().create_task(answer)
        self._pending.append((answer, slot))
        self._arrived.set()

    def finish(self) -> None:
        self._finished = True
        self._arrived.set()

    @property
    def finished(self) -> bool:
        """No more answers will be added."""
        return self._finished

    async def answers(self) -> AsyncIterator[Any]:
        while True:
            if not self._pending:
                if self._finished:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            head, slot = self._pending[0]
            value = await head if isinstance(head, asyncio.Future) else head
            self._pending.popleft()
            if slot:
                self._slots.release()
            yield value

    async def close(self) -> None:
        running = [p for p, _ in self._pending if isinstance(p, asyncio.Future)]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._pending.clear()


# a request read, with the ticket that counts it: its answer (see OrderedAnswers.add) or StopReading; ``start``
# reserves what running the request will hold (``Ticket.grow_to``), and the answer (or what it puts aside, a
# media frame) takes the ticket over
Start = Callable[[bytes, Ticket], Awaitable[Any]]


async def read_into(
    answers: OrderedAnswers, requests: AsyncIterator[bytes], start: Start, share: StreamShare, drained: Any = None
) -> Any:
    """Feed ``answers`` from ``requests``: each request read once a slot is free and the server's stream memory
    has room, its bytes counted in ``share``, then handed to ``start``, whose answer is added. Reading stops when
    the client half-closes (result None), when ``start`` returns ``StopReading`` (its outcome), or when the server
    drains (``drained``); then the frames the stream holds back are started (``share.flush``)."""
    task = asyncio.current_task()
    assert task is not None
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            task.cancel()

    unregister = share.memory.on_drain(stop)
    ticket: Optional[Ticket] = None
    try:
        while True:
            await answers.reserve()
            ticket = share.ticket()
            await ticket.grow_to(1)  # room to read: the budget (and the stream's share) is not used up
            try:
                data = await requests.__anext__()
            except StopAsyncIteration:
                if share.flush is not None:
                    share.flush()
                return None
            ticket.charge_to(len(data))
            answer = await start(data, ticket)
            if isinstance(answer, StopReading):
                return answer.outcome
            answers.add(answer)
            ticket = None  # the answer's now
    except asyncio.CancelledError:
        if not stopped:
            raise
        if share.flush is not None:
            share.flush()
        return drained
    finally:
        unregister()
        if ticket is not None:
            ticket.release()
        answers.finish()


class StopReading:
    """What ``start`` returns to end the reading, with the outcome the reader reports."""

    def __init__(self, outcome: Any):
        self.outcome = outcome
