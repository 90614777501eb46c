"""The dispatcher: knows every running servable version, resolves requests to one, bounds how many requests
wait, and hands their instances to the live worker with the most free slots. Frontends give it
already-validated instances and get one result or error per instance."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

from mindserve import _defaults
from mindserve._dispatch import deadlines
from mindserve._dispatch.limits import DEFAULT_MAX_REQUEST_INSTANCES, too_many_instances
from mindserve._dispatch.route import Route, ServedVersion
from mindserve._dispatch.worker_group import DEFAULT_RESTART_WAIT_S, WorkerGroup
from mindserve._errors import (
    DeadlineExceeded,
    NotServed,
    QueueFull,
    clip,
    method_unavailable,
    request_repr,
    servable_unavailable,
)
from mindserve._metrics import requests
from mindserve._metrics.totals import MethodTotals
from mindserve._tensor import InstanceResults, RawTensor, Results, StackedResults

__all__ = ["Dispatcher", "request_repr", "DEFAULT_MAX_ENQUEUED_REQUESTS"]

_timeout_at = getattr(asyncio, "timeout_at", None)  # Python 3.11 and later

DEFAULT_MAX_ENQUEUED_REQUESTS = _defaults.MAX_ENQUEUED_REQUESTS


class WorkerState(NamedTuple):
    """What metrics say of one device's worker of a servable version ("python-<k>": a Python-stage worker)."""

    servable: str
    version: int
    device_id: Union[int, str]
    up: bool
    restarts: int


class Dispatcher:
    def __init__(self) -> None:
        self._servables: dict[str, dict[int, WorkerGroup]] = {}
        self._subscribers: list[Callable[[], None]] = []
        self.max_enqueued_requests = DEFAULT_MAX_ENQUEUED_REQUESTS
        self.enqueued_requests = 0  # requests handed to workers and not yet answered, over all servables
        self.max_request_instances = DEFAULT_MAX_REQUEST_INSTANCES
        # how long a request for a version without a live worker waits for one being restarted
        self.restart_wait_s = DEFAULT_RESTART_WAIT_S
        self.requests = requests.RequestMetrics()  # every door's inference requests, counted
        self._pending: dict[tuple[str, int], int] = {}  # requests in run() by servable version

    def check_instance_count(self, count: int, servable: str, method: str) -> None:
        """Refuse a request of more than ``max_request_instances`` instances (every frontend asks before it makes
        anything per instance)."""
        if count > self.max_request_instances:
            raise too_many_instances(count, self.max_request_instances, servable, method)

    def add(self, group: WorkerGroup) -> None:
        group.restart_wait_s = self.restart_wait_s
        group.on_change = self._changed
        self._servables.setdefault(group.name, {})[group.version] = group
        self._changed()

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Have ``callback`` called (on the master loop) whenever what is served or which workers live changes:
        a servable version added, a worker dead, a replacement up. Health follows the workers this way."""
        self._subscribers.append(callback)

    def _changed(self) -> None:
        for callback in self._subscribers:
            callback()

    def set_restart_wait(self, seconds: float) -> None:
        """How long requests (and the jobs a dead worker never took) wait for a restarted worker."""
        self.restart_wait_s = seconds
        for group in self.groups():
            group.restart_wait_s = seconds

    def has(self, name: str, version: int) -> bool:
        return version in self._servables.get(name, {})

    def groups(self) -> list[WorkerGroup]:
        return [g for versions in self._servables.values() for g in versions.values()]

    # ---- what is served: model names, versions, readiness (every door asks here, none decides for itself) ----

    def served(self) -> list[ServedVersion]:
        """Every started servable version, as frontends may see it (health names, metadata)."""
        return [_view(g) for g in self.groups()]

    def ready(self) -> bool:
        """Whether every started servable version has a live worker (vacuously true with none)."""
        return all(g.ready for g in self.groups())

    def not_ready(self) -> list[ServedVersion]:
        """The servable versions without a live worker, which keep the server from being ready."""
        return [_view(g) for g in self.groups() if not g.ready]

    def find_method(self, model_name: str) -> tuple[str, str]:
        """The (servable, method) an Open Inference Protocol model name names: ``servable.method``, or
        ``servable`` for a servable with a single method; NotServed otherwise."""
        versions = self._servables.get(model_name, {})
        if versions:
            methods = sorted({m for g in versions.values() for m in g.methods})
            if len(methods) == 1:
                return model_name, methods[0]
            name = clip(model_name)
            raise NotServed(
                f"Model '{name}' is not found: servable {name} has {len(methods)} methods, name one as "
                f"'{name}.<method>' ({', '.join(methods)})"
            )
        servable, dot, method = model_name.rpartition(".")
        versions = self._servables.get(servable, {}) if dot else {}
        if any(method in g.methods for g in versions.values()):
            return servable, method
        # a servable that is served with a method that is not: its methods, so that a typo is seen at once
        methods = sorted({m for g in versions.values() for m in g.methods})
        listed = f": servable {clip(servable)} has methods {', '.join(methods)}" if methods else ""
        raise NotServed(
            f"Model '{clip(model_name)}' is not found, models are named 'servable.method', or 'servable' "
            f"for a servable with a single method{listed}"
        )

    def versions(self, servable: str, method: str) -> list[int]:
        """The started versions of a servable that have the method, oldest first."""
        return sorted(v for v, g in self._servables.get(servable, {}).items() if method in g.methods)

    def version(self, servable: str, method: str, version: int, model_name: str) -> ServedVersion:
        """The servable version that describes a model (metadata, readiness): the one asked for, or for 0 the
        newest with a live worker, else the newest. NotServed when there is no such version (``model_name`` is how
        the text names the model)."""
        versions = self.versions(servable, method)
        groups = self._servables.get(servable, {})
        if version == 0 and versions:
            live = [v for v in versions if groups[v].ready]
            return _view(groups[max(live or versions)])
        if version not in versions:
            running = ", ".join(str(v) for v in versions)
            raise NotServed(f"Model '{model_name}' version {version} is not found, running versions: {running}")
        return _view(groups[version])

    def resolve(self, name: str, method: str, version: int) -> Route:
        """The servable version that serves a request (the newest running one for version 0) and the method's
        signature. NotServed when the servable, version or method is not served; NoLiveWorker when it is but
        has no live worker (nor one being restarted)."""
        versions = self._servables.get(name, {})
        group: Optional[WorkerGroup] = None
        if version == 0:  # the newest version with a live worker, else the newest whose worker is restarting
            ordered = sorted(versions, reverse=True) if len(versions) > 1 else list(versions)
            for candidate in ordered:
                if versions[candidate].ready:
                    group = versions[candidate]
                    break
            else:
                group = next((versions[v] for v in ordered if versions[v].recovering), None)
        else:
            group = versions.get(version)
            if group is not None and not group.ready and not group.recovering:
                group = None
        if group is None:
            served = bool(versions) if version == 0 else version in versions
            raise servable_unavailable(name, method, version, served, "" if served else self._served_instead(name))
        signature = group.methods.get(method)
        if signature is None:
            raise method_unavailable(name, method, version, sorted(group.methods))
        requests.note_route(name, group.version, method)
        return Route(name, method, version, signature, group)

    def _served_instead(self, name: str) -> str:
        """What is served when servable ``name`` (or the version asked of it) is not: for the error's text."""
        versions = self._servables.get(name)
        if versions:
            return f"the served versions of {clip(name)} are {', '.join(str(v) for v in sorted(versions))}"
        if not self._servables:
            return f"servable '{clip(name)}' is not served; no servable is served"
        return f"servable '{clip(name)}' is not served; served: {', '.join(sorted(self._servables))}"

    async def run(self, route: Route, instances: Sequence[dict[str, RawTensor]]) -> Results:
        """One ``dict[str, RawTensor]`` of outputs or one ServingError per instance, in order (``instances`` is a
        list, or a StackedInputs read in place from the request); ``results.stacked`` holds the outputs whole
        when every instance succeeded with stacked outputs. Refused at once when ``max_enqueued_requests``
        requests are already waiting. With a deadline (``deadlines``): DeadlineExceeded once it passes, and the
        work not started by then is dropped, never run."""
        if self.enqueued_requests >= self.max_enqueued_requests:
            raise QueueFull(f"Serving Error: enqueued requests count exceeds the limit {self.max_enqueued_requests}")
        deadline = deadlines.current()
        if deadline is None:
            return await self._run_now(route, instances)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise deadline_exceeded(route)
        # past the deadline the run is cancelled: its jobs not yet started are dropped (_transport.job_flow)
        try:
            if _timeout_at is not None:  # (3.11: no task of its own, one timer: what most requests with a deadline
                async with _timeout_at(asyncio.get_running_loop().time() + remaining):  # cost, as clients set one)
                    return await self._run_now(route, instances)
            return await asyncio.wait_for(self._run_now(route, instances), remaining)
        except asyncio.TimeoutError:
            raise deadline_exceeded(route) from None

    async def _run_now(self, route: Route, instances: Sequence[dict[str, RawTensor]]) -> Results:
        group, method, version = route.group, route.method, route.version
        self.enqueued_requests += 1  # a request waiting for a restarted worker counts as enqueued
        key = (group.name, group.version)
        self._pending[key] = self._pending.get(key, 0) + 1
        try:
            results = await group.run(method, instances, version)
            requests.note_results(results)  # (a failure of the whole run is noted by the door that answers it)
            return results if isinstance(results, StackedResults) else InstanceResults(results)
        finally:
            self.enqueued_requests -= 1
            self._pending[key] -= 1

    # ---- what metrics read of the workers (no door reaches supervision: they ask here) ----

    def pending(self) -> dict[tuple[str, int], int]:
        """Requests handed to workers and not yet answered, by (servable, version), for every started version."""
        return {(g.name, g.version): self._pending.get((g.name, g.version), 0) for g in self.groups()}

    def worker_states(self) -> list[WorkerState]:
        """Each servable version's worker on each device: alive or not, and how often it was replaced."""
        return [
            WorkerState(g.name, g.version, state.device_id, state.up, state.restarts)
            for g in self.groups()
            for state in g.states()
        ]

    async def worker_stats(self) -> dict[tuple[str, int], dict[Any, dict[str, MethodTotals]]]:
        """What the workers measured (queue waits, stage durations, batch sizes), by (servable, version), device
        (a device id, or "python-<k>" for a Python-stage worker) and method, as of now."""
        groups = self.groups()
        found = await asyncio.gather(*(g.stats() for g in groups))
        return {(g.name, g.version): stats for g, stats in zip(groups, found)}


def deadline_exceeded(route: Route) -> DeadlineExceeded:
    """The answer to a request whose deadline passed before its work ran."""
    return DeadlineExceeded(
        f"Request {request_repr(route.servable, route.method, route.version)}, the request's "
        f"deadline passed before its answer was ready (work not started by then is dropped)"
    )


def _view(group: WorkerGroup) -> ServedVersion:
    return ServedVersion(group.name, group.version, group.methods, group.ready, group.seldon)
