"""Work that would hold the master's event loop too long (parsing and checking a large request) runs here, on
threads of the master's own, while the loop goes on answering everyone else.

asyncio's default executor cannot serve here: a serving script's main thread ends after its last line while the
master goes on serving, and from then on ``concurrent.futures`` refuses new work ("cannot schedule new futures
after interpreter shutdown"). These threads are started with the frontends, while the main thread still runs.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class OffLoop:
    """A few daemon threads that run functions for coroutines of one event loop."""

    def __init__(self, threads: int = 2, name: str = "mindserve-off-loop"):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        for k in range(threads):
            threading.Thread(target=self._serve, name=f"{name}-{k}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            loop, future, function, args = self._tasks.get()
            if future.cancelled():
                continue
            try:
                result = function(*args)
            except BaseException as exc:  # handed to the awaiting coroutine, which raises it
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` run on one of the threads; its result, or its exception raised here."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._tasks.put((loop, future, function, args))
        return await future


def _settle(future: asyncio.Future, result: Any, error: Any) -> None:
    if future.done():  # the awaiting coroutine was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
