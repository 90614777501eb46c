"""Runs the stages of a method over a batch of instances (from one or many requests), keeping one result or
one error per instance.

Values travel between stages as columns (mindserve._workers.columns). An instance that fails in a stage drops
out of the later stages; the others go on. Model stages see all live instances at once, so the model runner
can batch them: stacked columns go to the model whole, other values one instance at a time.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Union

import numpy as np

from mindserve import _dtypes
from mindserve._errors import INVALID_INPUTS, SYSTEM_ERROR, ServingError
from mindserve._metrics.worker_stats import stage_label
from mindserve._servable.definition import InputError, MethodDefinition, Model, ServableDefinition, StageDefinition
from mindserve._workers.columns import Column
from mindserve._workers.model_runner import ModelRunner

Value = Union[np.ndarray, str, bytes]


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def to_output_value(value: Any) -> Value:
    """A method output as it crosses to the master: numpy arrays, str and bytes; Python and numpy scalars become
    0-d arrays. Raises TypeError for anything else."""
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, (bool, int, float, np.generic)):
        value = np.asarray(value)
    if isinstance(value, np.ndarray) and _dtypes.code_of_array(value) is not None:
        return value if value.flags.c_contiguous else np.ascontiguousarray(value)  # keeps 0-d arrays 0-d
    kind = f"numpy array of {value.dtype}" if isinstance(value, np.ndarray) else str(type(value))
    raise TypeError(f"unsupported type {kind}, a method output must be a numpy array, str, bytes or a scalar")


def segment_outputs(method: MethodDefinition, first: int, last: int) -> list[tuple[int, int]]:
    """The values stages ``first`` to ``last`` make that a later stage or the method outputs use, in order: what
    a segment of a method hands on to the next (mindserve._supervision.segments plans the same from the
    worker's report)."""
    used = {(p.stage, p.index) for stage in method.stages[last:] for p in stage.args}
    used.update((p.stage, p.index) for p in method.outputs)
    return sorted(ref for ref in used if first <= ref[0] <= last)


class MethodExecutor:
    """Runs the methods of one loaded servable."""

    def __init__(self, servable: ServableDefinition, runners: dict[Model, ModelRunner]):
        self.servable = servable
        self.runners = runners

    def run_columns(
        self, method_name: str, inputs: dict[str, Column], count: int, timings: Optional[list[tuple[str, int]]] = None
    ) -> tuple[dict[str, Column], list[Optional[ServingError]]]:
        """Run a method on ``count`` instances given as one column per input. Returns one column per output
        (the value of a failed instance is None) and the error of each instance, None for those that
        succeeded. Stacked columns go through model stages whole, batched in C. Each stage run appends its
        label and duration in nanoseconds to ``timings``."""
        method = self.servable.methods[method_name]
        errors: list[Optional[ServingError]] = [None] * count
        # slots[s][k] is output k of stage s over all instances; stage 0 is the method inputs
        slots: dict[int, list] = {0: [inputs[name] for name in method.input_names]}
        self._run_stages(method, 1, len(method.stages), slots, errors, count, timings)
        outputs = {
            name: slots[p.stage][p.index] if p.stage in slots else Column.of_values([None] * count)
            for name, p in zip(method.output_names, method.outputs)
        }
        return outputs, errors

    def run_segment(
        self,
        method_name: str,
        first: int,
        last: int,
        given: dict[tuple[int, int], Column],
        count: int,
        timings: Optional[list[tuple[str, int]]] = None,
    ) -> tuple[dict[tuple[int, int], Column], list[Optional[ServingError]]]:
        """Run stages ``first`` to ``last`` (counted from 1, as error texts count them) of a method on ``count``
        instances, from the values ``given`` by reference (stage, output index; stage 0: the method inputs) that
        these stages use. Returns the values of these stages that later stages or the method outputs use (the
        ones to hand on, see ``segment_outputs``) and the error of each instance."""
        method = self.servable.methods[method_name]
        errors: list[Optional[ServingError]] = [None] * count
        slots: dict[int, list] = {}
        for (stage, index), column in given.items():
            width = len(method.input_names) if stage == 0 else method.stages[stage - 1].outputs_count
            slots.setdefault(stage, [None] * width)[index] = column
        self._run_stages(method, first, last, slots, errors, count, timings)
        empty = Column.of_values([None] * count)
        return {
            ref: slots[ref[0]][ref[1]] if ref[0] in slots else empty for ref in segment_outputs(method, first, last)
        }, errors

    def _run_stages(
        self,
        method: MethodDefinition,
        first: int,
        last: int,
        slots: dict[int, list],
        errors: list[Optional[ServingError]],
        count: int,
        timings: Optional[list[tuple[str, int]]],
    ) -> None:
        """Stages ``first`` to ``last`` of ``method``, each adding its output columns to ``slots``; an instance
        that fails in one drops out of the later ones."""
        for index in range(first, last + 1):
            stage = method.stages[index - 1]
            live = [i for i, err in enumerate(errors) if err is None]
            if not live:
                break
            args = [slots[p.stage][p.index] for p in stage.args]
            began = time.perf_counter_ns()
            outcome = self._model_columns(stage, args, errors) if stage.is_model and len(live) == count else None
            slots[index] = (
                outcome if outcome is not None else self._run_rows(method, index, stage, args, live, errors, count)
            )
            if timings is not None:
                timings.append((stage_label(index, stage.is_model), time.perf_counter_ns() - began))

    def _model_columns(self, stage: StageDefinition, args: list[Column], errors: list) -> Optional[list[Column]]:
        """A model stage over whole stacked columns, or None when they are not stacked."""
        try:
            outcome = self.runners[stage.model].run_columns(args)
        except ServingError as err:
            errors[:] = [err] * len(errors)
            return [Column.of_values([None] * len(errors))] * stage.outputs_count
        if outcome is None:
            return None
        columns, failed = outcome
        for i, failure in failed.items():
            errors[i] = failure
        return columns

    def _run_rows(
        self,
        method: MethodDefinition,
        index: int,
        stage: StageDefinition,
        args: list[Column],
        live: list[int],
        errors: list,
        count: int,
    ) -> list[Column]:
        """A stage over the live instances one by one (or in lists, for batch Python stages); its outputs as
        columns of per-instance values, None for instances that failed."""
        rows = [column.rows() for column in args]
        live_args = [tuple(r[i] for r in rows) for i in live]
        if stage.is_model:
            outcomes = self.runners[stage.model].run(0, live_args)
        elif stage.batch_size is None:
            outcomes = [self._call_one(method, index, stage, a) for a in live_args]
        else:
            outcomes = self._call_batched(method, index, stage, live_args)
        values: list[list] = [[None] * count for _ in range(stage.outputs_count)]
        for i, outcome in zip(live, outcomes):
            if isinstance(outcome, ServingError):
                errors[i] = outcome
                continue
            for k, value in enumerate(outcome):
                values[k][i] = value
        return [Column.of_values(v) for v in values]

    @staticmethod
    def _failure(
        method: MethodDefinition, index: int, stage: StageDefinition, message: str, exc: Optional[BaseException] = None
    ) -> ServingError:
        """A stage's failure on an instance: the client's error when the stage raised InputError (a bad input),
        a failure of the servable otherwise."""
        code = INVALID_INPUTS if isinstance(exc, InputError) else SYSTEM_ERROR
        return ServingError(
            code,
            f"Call {stage.tag} Failed, method: '{method.name}', stage index(begin with "
            f"1): {index}, error msg: {message}",
        )

    def _as_outputs(self, method: MethodDefinition, index: int, stage: StageDefinition, out: Any):
        """One instance's stage result as a tuple of ``outputs_count`` values, or the error for a wrong count."""
        count = stage.outputs_count
        if count == 1:
            if isinstance(out, (tuple, list)) and len(out) == 1:
                out = out[0]
            return (out,)
        if isinstance(out, (tuple, list)) and len(out) == count:
            return tuple(out)
        got = len(out) if isinstance(out, (tuple, list)) else 1
        return self._failure(
            method,
            index,
            stage,
            f"The outputs number {got} of one instance returned by "
            f"{stage.tag} is not equal to the outputs number {count} registered "
            f"in method {method.name}",
        )

    def _call_one(self, method: MethodDefinition, index: int, stage: StageDefinition, args: tuple):
        try:
            out = stage.function(*args)
        except Exception as exc:
            return self._failure(method, index, stage, _message(exc), exc)
        return self._as_outputs(method, index, stage, out)

    def _call_batched(self, method: MethodDefinition, index: int, stage: StageDefinition, args: list[tuple]) -> list:
        """Call a batch function on chunks of ``batch_size`` instances (all of them for 0). It may return (or
        yield) an exception in place of one instance's outputs to fail that instance alone. If it raises, the
        instances it answered before keep their results and the rest are given to it again in halves, down to
        single instances, so that only the instance that makes it raise fails with that error: a chunk may
        hold instances of several requests, and one client's bad instance must not fail another's. If it
        answers a different number of instances than it was given, the whole chunk fails."""
        step = stage.batch_size or len(args)
        outcomes: list = []
        for start in range(0, len(args), step):
            outcomes.extend(self._call_chunk(method, index, stage, args[start : start + step]))
        return outcomes

    def _call_chunk(self, method: MethodDefinition, index: int, stage: StageDefinition, chunk: list[tuple]) -> list:
        """One call of a batch function on ``chunk`` (see ``_call_batched``): one outcome per instance."""
        got: list = []
        try:
            for out in stage.function(list(chunk)):
                if isinstance(out, Exception):  # the function failed this instance alone
                    got.append(self._failure(method, index, stage, _message(out), out))
                else:
                    got.append(self._as_outputs(method, index, stage, out))
                if len(got) > len(chunk):
                    break
        except Exception as exc:
            rest = chunk[len(got) :]
            if len(rest) <= 1:
                return got + [self._failure(method, index, stage, _message(exc), exc)] * len(rest)
            half = len(rest) // 2  # isolate the instance that raised: each half on its own
            return (
                got
                + self._call_chunk(method, index, stage, rest[:half])
                + self._call_chunk(method, index, stage, rest[half:])
            )
        if len(got) != len(chunk):
            count = "more than" if len(got) > len(chunk) else f"{len(got)}, not"
            got = [
                self._failure(
                    method, index, stage, f"{stage.tag} returned {count} the {len(chunk)} instances provided to it"
                )
            ] * len(chunk)
        return got
