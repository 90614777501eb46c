"""The deadline of the request being served, as its transport gave it (a gRPC deadline; KServe's ``timeout``
parameter narrows it), on the master's loop: the dispatcher answers DEADLINE_EXCEEDED when it passes, and the
job flow drops the request's work that has not started (in the master's backlog, or in the worker's queue, whose
jobs carry their remaining time). A context variable, set by the door's transport once per request, because the
deadline is the request's own and every layer under the door runs in its task."""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from typing import Optional

_deadline: ContextVar[Optional[float]] = ContextVar("mindserve_request_deadline", default=None)


def current() -> Optional[float]:
    """The request's deadline (``time.monotonic()`` seconds), or None when it has none."""
    return _deadline.get()


def narrow(seconds: Optional[float]) -> Token:
    """Give the current request at most ``seconds`` more (None: no change); pass the token to ``reset``."""
    deadline = _deadline.get()
    if seconds is not None:
        ends = time.monotonic() + max(seconds, 0.0)
        deadline = ends if deadline is None else min(deadline, ends)
    return _deadline.set(deadline)


def reset(token: Token) -> None:
    _deadline.reset(token)
