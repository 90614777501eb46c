"""The workers of one servable version, one per device id: picking one for a job, moving the jobs of a dead
worker to the live ones, restarting the dead."""
from __future__ import annotations

import asyncio
import logging
from typing import Callable, Optional, Sequence

from mindserve._dispatch.worker_group import DEFAULT_RESTART_WAIT_S, DeviceState
from mindserve._errors import servable_unavailable
from mindserve._metrics.totals import MethodTotals, add_totals, read_snapshot
from mindserve._servable.signature import MethodSignature
from mindserve._supervision.worker_process import WorkerProcess, WorkerSpec
from mindserve._tensor import RawTensor
from mindserve._transport.job_flow import Job

log = logging.getLogger("mindserve")

RESTART_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # back-off between restarts of a worker that keeps failing


class ServableWorkers:
    """All workers of (servable, version), the dispatcher's WorkerGroup (mindserve._dispatch.worker_group).
    ``methods`` maps each method to its input and output names, as the workers reported them (the master never
    imports servable code itself)."""

    def __init__(self, specs: list[WorkerSpec]):
        self.specs = specs
        self.name = specs[0].name
        self.version = specs[0].version
        self.methods: dict[str, MethodSignature] = {}
        self.seldon: Optional[dict] = None
        self.workers: list[WorkerProcess] = []
        self._next = 0
        self._stopping = asyncio.Event()
        self._restarts: set[asyncio.Task] = set()
        self._waiters: set[asyncio.Future] = set()  # resolved when a restarted worker is up, or at stop
        self._parked: set[asyncio.Task] = set()  # jobs of a dead worker waiting for its replacement
        self.restart_wait_s = DEFAULT_RESTART_WAIT_S
        # called whenever a worker dies or a replacement is up (the dispatcher tells health, which stops polling)
        self.on_change: Optional[Callable[[], None]] = None
        self.restarts: dict[int, int] = {spec.device_id: 0 for spec in specs}  # workers replaced, by device
        self._retired: dict[int, dict[str, MethodTotals]] = {}  # statistics of replaced workers, by device

    async def start(self) -> None:
        """Start one worker per device concurrently; if any fails, stop the others and raise its error."""
        workers = [WorkerProcess(spec, self._on_exit) for spec in self.specs]
        outcomes = await asyncio.gather(*(w.start() for w in workers), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            await asyncio.gather(*(w.stop() for w, o in zip(workers, outcomes) if o is None),
                                 return_exceptions=True)
            raise errors[0]
        self.workers = workers
        self.methods = {name: MethodSignature.from_report(reported) for name, reported in workers[0].methods.items()}
        self.seldon = workers[0].seldon

    @property
    def ready(self) -> bool:
        return any(w.alive for w in self.workers)

    @property
    def recovering(self) -> bool:
        """Whether a dead worker is being replaced (and the version is not stopping): a request that finds no live
        worker may wait for it."""
        return bool(self._restarts) and not self._stopping.is_set()

    async def wait_live(self, timeout: float) -> Optional[WorkerProcess]:
        """A live worker, waiting up to ``timeout`` seconds for a restarted one while the version is recovering;
        None when there is none by then."""
        worker = self.pick()
        if worker is not None or not self.recovering or timeout <= 0:
            return worker
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)
        return self.pick()

    async def run(self, method: str, instances: Sequence[dict[str, RawTensor]], version: int) -> list:
        """Run ``method`` on the live worker with the most free slots, or on a restarted one within
        ``restart_wait_s``; one result or ServingError per instance."""
        worker = self.pick() or await self.wait_live(self.restart_wait_s)
        if worker is None:
            raise servable_unavailable(self.name, method, version)
        return await worker.run(method, instances, version)

    def states(self) -> list[DeviceState]:
        return [DeviceState(w.spec.device_id, w.alive, self.restarts.get(w.spec.device_id, 0)) for w in self.workers]

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _wake_waiters(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def pick(self) -> Optional[WorkerProcess]:
        """The live worker with the most free slots (fewest instances in flight); ties go round-robin so that
        every device is used."""
        count = len(self.workers)
        best = None
        for k in range(count):
            worker = self.workers[(self._next + k) % count]
            if worker.alive and (best is None or worker.in_flight < best.in_flight):
                best = worker
        if best is not None:
            self._next = (self.workers.index(best) + 1) % count
        return best

    def _on_exit(self, worker: WorkerProcess, untaken: list[Job]) -> None:
        """A worker died: the jobs it never took run on the others (or fail at once when none is alive), and
        a fresh process replaces it."""
        self._changed()
        if not self._stopping.is_set():
            task = asyncio.get_running_loop().create_task(self._restart(worker))
            self._restarts.add(task)
            task.add_done_callback(self._restarts.discard)
        for job in untaken:
            other = self.pick()
            if other is not None:
                other.submit(job)
            elif self.recovering:  # never taken by the dead worker: it runs on the restarted one
                parked = asyncio.get_running_loop().create_task(self._resubmit(job))
                self._parked.add(parked)
                parked.add_done_callback(self._parked.discard)
            elif not job.future.done():
                job.future.set_exception(servable_unavailable(self.name, job.method, job.version))

    async def _resubmit(self, job: Job) -> None:
        """Submit a job of a dead worker to the worker that replaces it, or fail it after ``restart_wait_s``."""
        worker = await self.wait_live(self.restart_wait_s)
        if job.future.done():  # the request was cancelled meanwhile
            return
        if worker is None:
            job.future.set_exception(servable_unavailable(self.name, job.method, job.version))
        else:
            worker.submit(job)

    async def _restart(self, dead: WorkerProcess) -> None:
        """Replace a dead worker with a new process on the same device, backing off while starts fail."""
        for attempt in range(1 << 30):
            delay = RESTART_DELAYS_S[min(attempt, len(RESTART_DELAYS_S) - 1)]
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return  # stopping: no more restarts
            except asyncio.TimeoutError:
                pass
            fresh = WorkerProcess(dead.spec, self._on_exit)
            try:
                await fresh.start()
            except Exception as exc:
                log.error("restart of worker for %s failed: %s", dead.spec.describe(), exc)
                continue
            if self._stopping.is_set():
                await fresh.stop()
                return
            self.workers[self.workers.index(dead)] = fresh
            self.restarts[dead.spec.device_id] = self.restarts.get(dead.spec.device_id, 0) + 1
            add_totals(self._retired.setdefault(dead.spec.device_id, {}), read_snapshot(dead.last_stats, self.methods))
            log.warning("worker for %s restarted (pid %s)", dead.spec.describe(), fresh.pid)
            self._wake_waiters()
            self._changed()
            return

    async def stats(self) -> dict[int, dict[str, MethodTotals]]:
        """The workers' statistics by device id and method: those of the live workers as of now, plus what the
        workers they replaced had reported."""
        snapshots = await asyncio.gather(*(w.stats() for w in self.workers))
        by_device: dict[int, dict[str, MethodTotals]] = {}
        for worker, snapshot in zip(self.workers, snapshots):
            totals = by_device.setdefault(worker.spec.device_id, {})
            add_totals(totals, self._retired.get(worker.spec.device_id, {}))
            add_totals(totals, read_snapshot(snapshot, self.methods))
        return by_device

    async def stop(self) -> None:
        self._stopping.set()
        # a restart still starting its worker is cancelled (WorkerProcess.start then ends that process): a worker
        # whose start hangs or is slow (loading a big model) must not hold up the stop
        for task in self._restarts:
            task.cancel()
        await asyncio.gather(*self._restarts, return_exceptions=True)
        self._wake_waiters()  # requests waiting for a restart are refused now
        await asyncio.gather(*self._parked, return_exceptions=True)
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)
