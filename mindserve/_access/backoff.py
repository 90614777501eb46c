"""A per-client back-off for the token endpoints (``/token``, ``/oauth/token``), so that a consumer's secret
cannot be guessed at the speed of the network.

A client (its address) may fail ``FAILURES_ALLOWED`` secret checks within ``WINDOW_S`` seconds; the last of them
starts a back-off of ``FIRST_BACKOFF_S``, during which its requests are answered 429 with ``Retry-After``
unchecked. Each further failure before the client is forgotten doubles the back-off (up to ``MAX_BACKOFF_S``)
and starts it again. A correct secret once the back-off is over works, and forgets the client's failures; so does
``WINDOW_S`` seconds without a failure once no back-off runs. At most ``MAX_CLIENTS`` clients are remembered,
the one whose last failure is oldest forgotten first, so that a storm of addresses costs bounded memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

FAILURES_ALLOWED = 5
WINDOW_S = 60.0
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
MAX_CLIENTS = 10_000


@dataclass
class _Record:
    failures: int  # within the current window
    since: float  # when the current window began
    last: float  # the latest failure
    backoff_s: float  # the latest back-off; 0 while none has begun
    until: float  # the end of the back-off running (0: none)


class FailureBackoff:
    """The failed secret checks of each client, and the back-off they earn (see the module's text)."""

    def __init__(
        self,
        allowed: int = FAILURES_ALLOWED,
        window_s: float = WINDOW_S,
        first_backoff_s: float = FIRST_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        capacity: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._allowed = allowed
        self._window = window_s
        self._first = first_backoff_s
        self._max = max_backoff_s
        self._capacity = capacity
        self._clock = clock
        self._clients: OrderedDict[str, _Record] = OrderedDict()  # least recently failed first

    def __len__(self) -> int:
        return len(self._clients)

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may be checked again; 0 when it may now."""
        record = self._clients.get(client)
        if record is None:
            return 0.0
        return max(0.0, record.until - self._clock())

    def failed(self, client: str) -> None:
        """Note a failed secret check of ``client``."""
        now = self._clock()
        self._forget_stale(now)
        record = self._clients.pop(client, None)
        if record is None:
            record = _Record(0, now, now, 0.0, 0.0)
        elif record.backoff_s == 0 and now - record.since > self._window:
            record.failures, record.since = 0, now  # a new window: the old failures are too far back to count
        record.failures += 1
        record.last = now
        if record.backoff_s:
            record.backoff_s = min(record.backoff_s * 2, self._max)
            record.until = now + record.backoff_s
        elif record.failures >= self._allowed:
            record.backoff_s = min(self._first, self._max)
            record.until = now + record.backoff_s
        self._clients[client] = record
        while len(self._clients) > self._capacity:
            self._clients.popitem(last=False)

    def succeeded(self, client: str) -> None:
        """Note a correct secret of ``client``: its failures are forgotten."""
        self._clients.pop(client, None)

    def _forget_stale(self, now: float) -> None:
        """Forget the clients, oldest failure first, whose last failure is a window back and whose back-off ended
        (the table is in order of last failure, so the walk stops at the first one still remembered)."""
        while self._clients:
            record = next(iter(self._clients.values()))
            if now - record.last <= self._window or record.until > now:
                break
            self._clients.popitem(last=False)
