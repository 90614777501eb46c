"""What a servable's methods take and give, as the master knows them from its workers' reports: names in order,
and for each tensor its dtype and per-instance shape where the servable fixes them. Neutral ground: the
workers' reports are read into it by supervision, the dispatcher routes by it, and frontends check requests
and answer metadata from it, without any of them importing another."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


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
            return tuple(
                TensorSpec(int(s["dtype"]), None if s["shape"] is None else tuple(s["shape"]))
                if s
                else TensorSpec(0, None)
                for s in given
            )

        inputs, outputs = list(reported["inputs"]), list(reported["outputs"])
        return cls(
            tuple(inputs),
            tuple(outputs),
            specs(inputs, reported.get("input_specs")),
            specs(outputs, reported.get("output_specs")),
        )
