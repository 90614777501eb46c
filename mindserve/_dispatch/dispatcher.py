"""The dispatcher: knows every running servable version, resolves requests to one, and hands their instances
to a live worker. Frontends give it already-validated instances and get one result or error per instance."""
from __future__ import annotations

from typing import Optional

from mindserve._errors import INVALID_INPUTS, SERVABLE_UNAVAILABLE, ServingError
from mindserve._supervision.servable_workers import ServableWorkers
from mindserve._tensor import RawTensor


def request_repr(name: str, method: str, version: int) -> str:
    """How error texts name a request, as MindSpore Serving writes it: ``servable(add) method(add_common) ``."""
    text = f"servable({name}) method({method}) "
    return text + f"version({version}) " if version > 0 else text


class Dispatcher:
    def __init__(self) -> None:
        self._servables: dict[str, dict[int, ServableWorkers]] = {}

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
        if version == 0:
            live = [v for v, g in versions.items() if g.ready]
            group = versions[max(live)] if live else None
        else:
            group = versions.get(version)
        if group is None or not group.ready:
            raise ServingError(SERVABLE_UNAVAILABLE,
                               f"Request {request_repr(name, method, version)}, servable is not available")
        signature = group.methods.get(method)
        if signature is None:
            raise ServingError(INVALID_INPUTS, f"Request {request_repr(name, method, version)}, method is not available")
        return group, signature

    async def run(self, group: ServableWorkers, method: str, instances: list[dict[str, RawTensor]]) -> list:
        """One ``dict[str, RawTensor]`` of outputs or one ServingError per instance, in order."""
        worker = group.pick()
        if worker is None:
            raise ServingError(SERVABLE_UNAVAILABLE, f"Request {request_repr(group.name, method, group.version)}, "
                                                     f"servable is not available")
        return await worker.run(method, instances)
