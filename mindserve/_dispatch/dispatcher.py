"""The dispatcher: knows every running servable version, resolves requests to one, bounds how many requests
wait, and hands their instances to the live worker with the most free slots. Frontends give it
already-validated instances and get one result or error per instance."""
from __future__ import annotations

from typing import Optional, Sequence

from mindserve._errors import (FAILED, INVALID_INPUTS, QUEUE_FULL_MESSAGE_PREFIX, ServingError, request_repr,
                               servable_unavailable)
from mindserve._dispatch.limits import DEFAULT_MAX_REQUEST_INSTANCES, too_many_instances
from mindserve._supervision.servable_workers import ServableWorkers
from mindserve._tensor import RawTensor

__all__ = ["Dispatcher", "request_repr", "DEFAULT_MAX_ENQUEUED_REQUESTS"]

DEFAULT_MAX_ENQUEUED_REQUESTS = 10000


class Dispatcher:
    def __init__(self) -> None:
        self._servables: dict[str, dict[int, ServableWorkers]] = {}
        self.max_enqueued_requests = DEFAULT_MAX_ENQUEUED_REQUESTS
        self.enqueued_requests = 0  # requests handed to workers and not yet answered, over all servables
        self.max_request_instances = DEFAULT_MAX_REQUEST_INSTANCES

    def check_instance_count(self, count: int, servable: str, method: str) -> None:
        """Refuse a request of more than ``max_request_instances`` instances (every frontend asks before it makes
        anything per instance)."""
        if count > self.max_request_instances:
            raise too_many_instances(count, self.max_request_instances, servable, method)

    def add(self, group: ServableWorkers) -> None:
        self._servables.setdefault(group.name, {})[group.version] = group

    def has(self, name: str, version: int) -> bool:
        return version in self._servables.get(name, {})

    def groups(self) -> list[ServableWorkers]:
        return [g for versions in self._servables.values() for g in versions.values()]

    def resolve(self, name: str, method: str, version: int) -> tuple[ServableWorkers, dict]:
        """The servable version that serves a request (the newest running one for version 0) and the method's
        signature; ServingError when there is none or it has no live worker."""
        versions = self._servables.get(name, {})
        group: Optional[ServableWorkers] = None
        if version == 0:  # the newest version with a live worker
            for candidate in sorted(versions, reverse=True) if len(versions) > 1 else versions:
                if versions[candidate].ready:
                    group = versions[candidate]
                    break
        else:
            group = versions.get(version)
            if group is not None and not group.ready:
                group = None
        if group is None:
            raise servable_unavailable(name, method, version)
        signature = group.methods.get(method)
        if signature is None:
            raise ServingError(INVALID_INPUTS, f"Request {request_repr(name, method, version)}, method is not available")
        return group, signature

    async def run(self, group: ServableWorkers, method: str, instances: Sequence[dict[str, RawTensor]],
                  version: Optional[int] = None) -> list:
        """One ``dict[str, RawTensor]`` of outputs or one ServingError per instance, in order (``instances`` is a
        list, or a StackedInputs read in place from the request). Refused at once
        when ``max_enqueued_requests`` requests are already waiting. ``version`` is the one the request asked
        for (0: the newest), as error texts name it; None names the group's."""
        version = group.version if version is None else version
        if self.enqueued_requests >= self.max_enqueued_requests:
            raise ServingError(FAILED, f"{QUEUE_FULL_MESSAGE_PREFIX} {self.max_enqueued_requests}")
        worker = group.pick()
        if worker is None:
            raise servable_unavailable(group.name, method, version)
        self.enqueued_requests += 1
        try:
            return await worker.run(method, instances, version)
        finally:
            self.enqueued_requests -= 1
