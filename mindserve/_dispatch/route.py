"""Where a request goes, as the dispatcher resolves it: ``Dispatcher.resolve`` gives a Route, ``Dispatcher.run``
takes it. Frontends read the method's signature from it and never handle the servable version's workers;
what they may know of a servable version (metadata, readiness) is a ServedVersion."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from mindserve._supervision.servable_workers import ServableWorkers


@dataclass(frozen=True)
class TensorSpec:
    """What the servable fixes of a method input or output: its dtype code (0, MS_UNKNOWN, where only a Python
    stage takes or makes it) and its per-instance shape (-1 for a variable dim; None where nothing fixes it)."""

    dtype: int
    shape: Optional[tuple[int, ...]]


@dataclass(frozen=True)
class MethodSignature:
    """A method's input and output names, in order, and what is known of each."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    input_specs: tuple[TensorSpec, ...]
    output_specs: tuple[TensorSpec, ...]

    @classmethod
    def from_report(cls, reported: dict[str, Any]) -> "MethodSignature":
        """The signature a worker reported at its start (mindserve._workers.loader.method_signatures)."""
        def specs(names: list, given: Optional[list]) -> tuple[TensorSpec, ...]:
            given = given or [None] * len(names)
            return tuple(TensorSpec(int(s["dtype"]), None if s["shape"] is None else tuple(s["shape"]))
                         if s else TensorSpec(0, None) for s in given)

        inputs, outputs = list(reported["inputs"]), list(reported["outputs"])
        return cls(tuple(inputs), tuple(outputs), specs(inputs, reported.get("input_specs")),
                   specs(outputs, reported.get("output_specs")))


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
    group: "ServableWorkers"

    @property
    def served_version(self) -> int:
        return self.group.version
