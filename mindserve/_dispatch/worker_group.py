"""What the dispatcher needs of the workers that serve one servable version, and nothing more: a small Protocol
that supervision's ``ServableWorkers`` implements with real processes and tests implement in memory. The
dispatcher never sees a process, a channel or a restart; it asks a group to run a method and whether it can."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Protocol, Sequence, Union

from mindserve import _defaults
from mindserve._metrics.totals import MethodTotals
from mindserve._servable.signature import MethodSignature
from mindserve._tensor import RawTensor

# how long a request waits for a restarted worker when the servable version has no live one (a worker restart
# takes about a second: it is better answered late than refused); server.context.set_worker_restart_wait
DEFAULT_RESTART_WAIT_S = _defaults.RESTART_WAIT_S


class DeviceState(NamedTuple):
    """One device's worker of a group, as metrics report it; ``device_id`` is ``"python-<k>"`` for the k-th
    process that runs Python stages only (num_parallel_workers)."""

    device_id: Union[int, str]
    up: bool
    restarts: int


class WorkerGroup(Protocol):
    """The workers of one servable version (one per device id, and any Python-stage workers of
    num_parallel_workers), as the dispatcher uses them.

    ``methods`` holds each method's signature as the workers reported it; ``seldon`` how the servable answers
    Seldon's Classifier (None: it does not). ``ready``: a worker is alive now; ``recovering``: none may be, but
    one is being restarted, and a request may wait ``restart_wait_s`` for it. ``on_change`` is called whenever a
    worker dies or a replacement is up.
    """

    name: str
    version: int
    methods: dict[str, MethodSignature]
    seldon: Optional[dict]
    restart_wait_s: float
    on_change: Optional[Callable[[], None]]

    @property
    def ready(self) -> bool: ...

    @property
    def recovering(self) -> bool: ...

    async def run(self, method: str, instances: Sequence[dict[str, RawTensor]], version: int) -> list:
        """One dict of outputs or one ServingError per instance, from a live worker (waiting up to
        ``restart_wait_s`` for a restarted one); raises the "servable is not available" error when there is none.
        ``version`` is the one the request named (0: the newest), for error texts."""
        ...

    def states(self) -> list[DeviceState]:
        """Each device's worker: alive or not, and how often it was replaced."""
        ...

    async def stats(self) -> dict[Union[int, str], dict[str, MethodTotals]]:
        """What the workers measured, by device id (or "python-<k>") and method, as of now (what replaced workers
        had reported included)."""
        ...
