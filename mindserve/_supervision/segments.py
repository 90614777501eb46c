"""A method run as segments over several processes (num_parallel_workers): the plan, made from what a worker
reported at its start (the master never imports servable code), and the values of a request's instances as
they move from one segment to the next.

A segment is a maximal run of consecutive stages of one kind: Python stages (run by any process that runs Python
stages: the extra Python-stage workers and the device workers) or model stages (run by a device worker, where
the model is loaded, so that instances of many requests still batch into one model run). Each segment takes the
values it uses from before (method inputs, earlier stages' outputs) and hands on those that it makes and a later
stage or the method outputs use; see mindserve._transport.worker_contract for how a segment job names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np

from mindserve._errors import ServingError
from mindserve._tensor import RawTensor, StackedInput, StackedInputs, StackedOutput, StackedResults
from mindserve._transport.worker_contract import segment_name, value_name


@dataclass(frozen=True)
class Segment:
    """Stages ``first`` to ``last`` (counted from 1) of a method, all of one kind."""

    first: int
    last: int
    model: bool
    job: str  # the job's method name
    needs: tuple[str, ...]  # the values it takes, by value name
    hands_on: tuple[str, ...]  # the values it gives back, by value name


@dataclass(frozen=True)
class MethodPlan:
    segments: tuple[Segment, ...]
    outputs: tuple[tuple[str, str], ...]  # (method output name, value name)

    @property
    def has_model(self) -> bool:
        return any(s.model for s in self.segments)


def _ref(item: Any) -> Optional[tuple[int, int]]:
    if isinstance(item, list) and len(item) == 2 and all(isinstance(x, int) and x >= 0 for x in item):
        return item[0], item[1]
    return None


def plan_method(name: str, reported: dict[str, Any]) -> Optional[MethodPlan]:
    """The segments of a method from its report (mindserve._workers.loader.method_plan); None when the report
    holds no plan or a malformed one (the method then runs whole, in one device worker job)."""
    stages, output_refs, inputs = reported.get("stages"), reported.get("output_refs"), reported.get("inputs")
    if not isinstance(stages, list) or not isinstance(output_refs, list) or not isinstance(inputs, list):
        return None
    uses: list[list[tuple[int, int]]] = []
    kinds: list[bool] = []
    for stage in stages:
        args = [_ref(a) for a in stage.get("args", None) or []] if isinstance(stage, dict) else [None]
        if any(a is None for a in args):
            return None
        uses.append([a for a in args if a is not None])
        kinds.append(bool(stage.get("model")))
    outputs = [_ref(o) for o in output_refs]
    if any(o is None for o in outputs) or len(outputs) != len(reported.get("outputs") or []):
        return None
    spans: list[tuple[int, int]] = []
    for index in range(1, len(stages) + 1):
        if spans and kinds[spans[-1][1] - 1] == kinds[index - 1]:
            spans[-1] = (spans[-1][0], index)
        else:
            spans.append((index, index))

    def segment(first: int, last: int) -> Segment:
        needs = sorted({ref for args in uses[first - 1 : last] for ref in args if ref[0] < first})
        later = {ref for args in uses[last:] for ref in args} | {o for o in outputs if o is not None}
        hands_on = sorted(ref for ref in later if first <= ref[0] <= last)
        return Segment(
            first,
            last,
            kinds[first - 1],
            segment_name(name, first, last),
            tuple(value_name(inputs, *ref) for ref in needs),
            tuple(value_name(inputs, *ref) for ref in hands_on),
        )

    return MethodPlan(
        tuple(segment(first, last) for first, last in spans),
        tuple((out, value_name(inputs, *ref)) for out, ref in zip(reported["outputs"], outputs) if ref is not None),
    )


class Values:
    """The values of a request's instances by value name, as segments make them: stacked (every instance's
    value back to back, as a request or a reply in which every instance succeeded brings them) or one
    RawTensor per instance."""

    def __init__(self, instances: Sequence[dict[str, RawTensor]]):
        self.count = len(instances)
        self._stacked: dict[str, StackedInput] = {}
        self._whole: set[str] = set()  # stacked values whose source holds every instance's row in order, no more
        self._rows: dict[str, list] = {}
        if isinstance(instances, StackedInputs):
            self._stacked.update(instances.inputs)
        elif self.count:
            self._rows.update((name, [inst[name] for inst in instances]) for name in instances[0])

    def get(self, name: str, index: int) -> RawTensor:
        column = self._stacked.get(name)
        if column is None:
            return self._rows[name][index]
        start = int(column.offsets[index])
        return RawTensor(column.dtype, column.row_shape, memoryview(column.source)[start : start + column.row_size])

    def instances(self, names: Sequence[str], live: list[int]) -> Sequence[dict[str, RawTensor]]:
        """The values ``names`` of the instances ``live``, as a job takes them: stacked when every instance is
        live and every value stacked (copied into the job as whole columns), else instance by instance."""
        if len(live) == self.count and all(name in self._stacked for name in names):
            return StackedInputs(self.count, {name: self._stacked[name] for name in names})
        return [{name: self.get(name, i) for name in names} for i in live]

    def stacked(self, outputs: Sequence[tuple[str, str]]) -> Optional[StackedResults]:
        """The method's outputs ((output name, value name) each) as a StackedResults when every one is a value
        that a reply brought whole and stacked (so frontends can take them whole), else None."""
        if not all(value in self._whole for _, value in outputs):
            return None
        return StackedResults(
            self.count,
            {
                name: StackedOutput(
                    self._stacked[value].dtype, self._stacked[value].row_shape, self._stacked[value].source
                )
                for name, value in outputs
            },
        )

    def take(self, names: Sequence[str], live: list[int], outcome: Union[Sequence, StackedResults]) -> None:
        """Keep the values ``names`` of a segment's reply for the instances ``live`` (one result per live
        instance; a failed instance's ServingError has none)."""
        if isinstance(outcome, StackedResults) and len(live) == self.count:
            for name in names:
                out, size = outcome.outputs[name], outcome.row_bytes[name]
                offsets = np.arange(self.count, dtype=np.uint64) * np.uint64(size)
                self._stacked[name] = StackedInput(out.dtype, out.row_shape, size, out.data, offsets)
                self._whole.add(name)
            return
        for name in names:
            column = self._rows.setdefault(name, [None] * self.count)
            for i, result in zip(live, outcome):
                if not isinstance(result, ServingError):
                    column[i] = result[name]
