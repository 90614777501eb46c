"""Where a request goes, as the dispatcher resolves it: ``Dispatcher.resolve`` gives a Route, ``Dispatcher.run``
takes it. Frontends read the method's signature from it and never handle the servable version's workers;
what they may know of a servable version (metadata, readiness) is a ServedVersion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from mindserve._dispatch.worker_group import WorkerGroup
from mindserve._servable.signature import MethodSignature, TensorSpec

__all__ = ["MethodSignature", "Route", "ServedVersion", "TensorSpec"]


@dataclass(frozen=True)
class ServedVersion:
    """A servable version as frontends see it, at the moment they asked: its methods' signatures and whether it
    has a live worker now."""

    name: str
    version: int
    methods: dict[str, MethodSignature]
    ready: bool
    seldon: Optional[dict[str, Any]] = None  # how it answers Seldon's Classifier (mindserve._servable.seldon)


@dataclass(frozen=True)
class Route:
    """A resolved request: the servable, method and version it named (0: the newest), the method's signature,
    and the servable version that runs it (``served_version``)."""

    servable: str
    method: str
    version: int
    signature: MethodSignature
    group: WorkerGroup

    @property
    def served_version(self) -> int:
        return self.group.version
