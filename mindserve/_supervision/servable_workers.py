"""The workers of one servable version, one per device id, and num_parallel_workers' extra processes that run
Python stages only: picking one for a job, running a method as segments over them (mindserve._supervision
.segments), moving the jobs of a dead worker to the live ones, restarting the dead."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Optional, Sequence, Union, cast

from mindserve._dispatch.worker_group import DEFAULT_RESTART_WAIT_S, DeviceState
from mindserve._errors import ServingError, servable_unavailable
from mindserve._metrics.totals import MethodTotals, add_totals, read_snapshot
from mindserve._servable.signature import MethodSignature
from mindserve._supervision.segments import MethodPlan, Values, plan_method
from mindserve._supervision.worker_process import WorkerProcess, WorkerSpec
from mindserve._tensor import RawTensor
from mindserve._transport.job_flow import Job

log = logging.getLogger("mindserve")

RESTART_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # back-off between restarts of a worker that keeps failing


class ServableWorkers:
    """All workers of (servable, version), the dispatcher's WorkerGroup (mindserve._dispatch.worker_group).
    ``methods`` maps each method to its input and output names, as the workers reported them (the master never
    imports servable code itself). ``python_specs`` are the extra processes that run Python stages only
    (num_parallel_workers above the number of device ids); without them every method runs whole in one device
    worker job, as it always did."""

    def __init__(self, specs: list[WorkerSpec], python_specs: Sequence[WorkerSpec] = ()):
        self.specs = specs
        self.python_specs = list(python_specs)
        self.python_workers: list[WorkerProcess] = []
        self._plans: dict[str, MethodPlan] = {}  # methods run as segments (only with Python-stage workers)
        self._segment_outputs: dict[str, list[str]] = {}  # segment job name -> the value names its reply holds
        self._next_python = 0
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
        # workers replaced, and statistics of replaced workers, by label (device id, or "python-<k>")
        self.restarts: dict[Union[int, str], int] = {spec.label: 0 for spec in [*specs, *self.python_specs]}
        self._retired: dict[Union[int, str], dict[str, MethodTotals]] = {}

    async def start(self) -> None:
        """Start one worker per device and the Python-stage workers concurrently; if any fails, stop the others
        and raise its error."""
        workers = [WorkerProcess(spec, self._on_exit) for spec in [*self.specs, *self.python_specs]]
        outcomes = await asyncio.gather(*(w.start() for w in workers), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            await asyncio.gather(*(w.stop() for w, o in zip(workers, outcomes) if o is None), return_exceptions=True)
            raise errors[0]
        self.workers, self.python_workers = workers[: len(self.specs)], workers[len(self.specs) :]
        reported = workers[0].methods
        self.methods = {name: MethodSignature.from_report(method) for name, method in reported.items()}
        self.seldon = workers[0].seldon
        if self.python_workers:
            for name, method in reported.items():
                plan = plan_method(name, method)
                if plan is not None:
                    self._plans[name] = plan
                    self._segment_outputs.update((s.job, list(s.hands_on)) for s in plan.segments)
        for worker in workers:
            self._prepare(worker)

    def _prepare(self, worker: WorkerProcess) -> None:
        """Teach a started worker's job flow the replies of segment jobs (value names, not method outputs)."""
        if worker.flow is not None:
            worker.flow.outputs.update(self._segment_outputs)

    @property
    def processes(self) -> list[WorkerProcess]:
        """Every worker process of the version: the device workers, then the Python-stage workers."""
        return [*self.workers, *self.python_workers]

    @property
    def ready(self) -> bool:
        """A device worker is alive (it runs every stage); or, for a servable without model stages, any worker
        (a Python-stage worker down leaves the version ready while a device worker can run its stages)."""
        if any(w.alive for w in self.workers):
            return True
        return (
            bool(self._plans)
            and not any(p.has_model for p in self._plans.values())
            and any(w.alive for w in self.python_workers)
        )

    @property
    def recovering(self) -> bool:
        """Whether a dead worker is being replaced (and the version is not stopping): a request that finds no live
        worker may wait for it."""
        return bool(self._restarts) and not self._stopping.is_set()

    async def wait_live(self, timeout: float, python: bool = False) -> Optional[WorkerProcess]:
        """A live worker (``python``: one that runs Python stages, a device worker or a Python-stage worker),
        waiting up to ``timeout`` seconds for a restarted one while the version is recovering; None when there
        is none by then."""
        worker = self.pick(python)
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
        return self.pick(python)

    async def run(self, method: str, instances: Sequence[dict[str, RawTensor]], version: int) -> list:
        """Run ``method`` on the live worker with the most free slots, or on a restarted one within
        ``restart_wait_s``; one result or ServingError per instance. With Python-stage workers, a method of
        Python stages only runs on any process that runs Python stages, and one of both kinds runs as segments
        (``_run_segments``)."""
        plan = self._plans.get(method)
        if plan is not None and len(plan.segments) > 1:
            return await self._run_segments(method, plan, instances, version)
        python = plan is not None and not plan.has_model
        worker = self.pick(python) or await self.wait_live(self.restart_wait_s, python)
        if worker is None:
            raise servable_unavailable(self.name, method, version)
        return await worker.run(method, instances, version)

    async def _run_segments(
        self, method: str, plan: MethodPlan, instances: Sequence[dict[str, RawTensor]], version: int
    ) -> list:
        """Run a method segment after segment: Python segments on the least-loaded process that runs Python
        stages, model segments on the least-loaded device worker (where instances of many requests batch). Every
        segment's values cross to the master, whichever process ran it, so a value that cannot cross fails its
        instance alike everywhere. An instance that fails in a segment keeps its error and goes no further; the
        others go on."""
        values = Values(instances)
        results: list = [None] * len(instances)
        live = list(range(len(instances)))
        for segment in plan.segments:
            if not live:
                break
            python = not segment.model
            worker = self.pick(python) or await self.wait_live(self.restart_wait_s, python)
            if worker is None:
                error = servable_unavailable(self.name, method, version)
                if len(live) == len(instances):
                    raise error
                outcome: Sequence = [error] * len(live)
            else:
                try:
                    outcome = await worker.run(segment.job, values.instances(segment.needs, live), version)
                except ServingError as exc:  # the worker was gone before it took the job
                    outcome = [exc] * len(live)
            values.take(segment.hands_on, live, outcome)
            for i, result in zip(live, outcome):
                if isinstance(result, ServingError):
                    results[i] = result
            live = [i for i in live if results[i] is None]
        if len(live) == len(instances):
            whole = values.stacked(plan.outputs)
            if whole is not None:  # every instance succeeded and every output came back stacked
                # a sequence of the same dicts, which frontends can also take whole (as a worker's reply is)
                return cast(list, whole)
        for i in live:
            results[i] = {name: values.get(value, i) for name, value in plan.outputs}
        return results

    def states(self) -> list[DeviceState]:
        return [DeviceState(w.spec.label, w.alive, self.restarts.get(w.spec.label, 0)) for w in self.processes]

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _wake_waiters(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def pick(self, python: bool = False) -> Optional[WorkerProcess]:
        """The live worker with the most free slots (fewest instances in flight); ties go round-robin so that
        every device is used. ``python``: among every process that runs Python stages (the Python-stage workers
        first, then the device workers), else among the device workers."""
        workers = [*self.python_workers, *self.workers] if python else self.workers
        count = len(workers)
        start = self._next_python if python else self._next
        best = None
        for k in range(count):
            worker = workers[(start + k) % count]
            if worker.alive and (best is None or worker.in_flight < best.in_flight):
                best = worker
        if best is not None:
            following = (workers.index(best) + 1) % count
            if python:
                self._next_python = following
            else:
                self._next = following
        return best

    def _on_exit(self, worker: WorkerProcess, untaken: list[Job]) -> None:
        """A worker died: the jobs it never took run on the others (or fail at once when none is alive), and
        a fresh process replaces it."""
        self._changed()
        if not self._stopping.is_set():
            task = asyncio.get_running_loop().create_task(self._restart(worker))
            self._restarts.add(task)
            task.add_done_callback(self._restarts.discard)
        python = bool(worker.spec.python_worker)  # its jobs are Python ones: any process that runs them will do
        for job in untaken:
            other = self.pick(python)
            if other is not None:
                other.submit(job)
            elif self.recovering:  # never taken by the dead worker: it runs on the restarted one
                parked = asyncio.get_running_loop().create_task(self._resubmit(job, python))
                self._parked.add(parked)
                parked.add_done_callback(self._parked.discard)
            elif not job.future.done():
                job.future.set_exception(servable_unavailable(self.name, job.method, job.version))

    async def _resubmit(self, job: Job, python: bool) -> None:
        """Submit a job of a dead worker to the worker that replaces it, or fail it after ``restart_wait_s``."""
        worker = await self.wait_live(self.restart_wait_s, python)
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
            self._prepare(fresh)
            kind = self.python_workers if dead.spec.python_worker else self.workers
            kind[kind.index(dead)] = fresh
            label = dead.spec.label
            self.restarts[label] = self.restarts.get(label, 0) + 1
            add_totals(self._retired.setdefault(label, {}), read_snapshot(dead.last_stats, self.methods))
            log.warning("worker for %s restarted (pid %s)", dead.spec.describe(), fresh.pid)
            self._wake_waiters()
            self._changed()
            return

    async def stats(self) -> dict[Union[int, str], dict[str, MethodTotals]]:
        """The workers' statistics by label (device id, or "python-<k>") and method: those of the live workers as
        of now, plus what the workers they replaced had reported."""
        workers = self.processes
        snapshots = await asyncio.gather(*(w.stats() for w in workers))
        by_device: dict[Union[int, str], dict[str, MethodTotals]] = {}
        for worker, snapshot in zip(workers, snapshots):
            totals = by_device.setdefault(worker.spec.label, {})
            add_totals(totals, self._retired.get(worker.spec.label, {}))
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
        await asyncio.gather(*(w.stop() for w in self.processes), return_exceptions=True)
