"""What the streaming doors share: a stream's requests run concurrently, their answers go back in the order the
requests came, and at most ``limit`` run at once, so that a client sending faster than it reads is held back by
gRPC's flow control (the next request is read only when a slot frees), never buffered without bound."""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Callable, Union


class OrderedAnswers:
    """Answers of one stream: ``add`` each request's answer (an awaitable, or a value ready now) after ``reserve``
    gave it a slot; ``answers`` yields them in order as they complete, freeing the slots; ``finish`` says that
    no more will come. ``close`` cancels whatever is still running."""

    def __init__(self, limit: int):
        self._slots = asyncio.Semaphore(limit)
        self._pending: deque[Union[asyncio.Future, Any]] = deque()
        self._arrived = asyncio.Event()
        self._finished = False

    async def reserve(self) -> None:
        await self._slots.acquire()

    def add(self, answer: Union[Awaitable, Any]) -> None:
        if asyncio.iscoroutine(answer):
            answer = asyncio.get_running_loop().create_task(answer)
        self._pending.append(answer)
        self._arrived.set()

    def finish(self) -> None:
        self._finished = True
        self._arrived.set()

    async def answers(self) -> AsyncIterator[Any]:
        while True:
            if not self._pending:
                if self._finished:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            head = self._pending[0]
            value = await head if isinstance(head, asyncio.Future) else head
            self._pending.popleft()
            self._slots.release()
            yield value

    async def close(self) -> None:
        running = [p for p in self._pending if isinstance(p, asyncio.Future)]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._pending.clear()


async def read_into(answers: OrderedAnswers, requests: AsyncIterator[bytes],
                    start: Callable[[bytes], Union[Awaitable, Any, None]]) -> Any:
    """Feed ``answers`` from ``requests``: each request read once a slot is free and handed to ``start``, whose
    result is added; reading stops when the client half-closes, or when ``start`` returns None (the stream is to
    end: what it returns then is this coroutine's result, via ``StopReading``)."""
    try:
        while True:
            await answers.reserve()
            try:
                data = await requests.__anext__()
            except StopAsyncIteration:
                return None
            answer = start(data)
            if isinstance(answer, StopReading):
                return answer.outcome
            answers.add(answer)
    finally:
        answers.finish()


class StopReading:
    """What ``start`` returns to end the reading, with the outcome the reader reports."""

    def __init__(self, outcome: Any):
        self.outcome = outcome
