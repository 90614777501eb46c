"""Runs the stages of a method over a list of instances, keeping one result or one error per instance.

An instance that fails in a stage drops out of the later stages; the others go on. Model stages see all
live instances at once, so the model runner can batch them.
"""
from __future__ import annotations

from typing import Any, Union

import numpy as np

from mindserve import _dtypes
from mindserve._errors import SYSTEM_ERROR, ServingError
from mindserve._servable.definition import MethodDefinition, Model, ServableDefinition, StageDefinition
from mindserve._workers.model_runner import ModelRunner

Value = Union[np.ndarray, str, bytes]
InstanceOutcome = Union[dict, ServingError]


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


class MethodExecutor:
    """Runs the methods of one loaded servable."""

    def __init__(self, servable: ServableDefinition, runners: dict[Model, ModelRunner]):
        self.servable = servable
        self.runners = runners

    def run(self, method_name: str, instances: list[dict[str, Value]]) -> list[InstanceOutcome]:
        method = self.servable.methods[method_name]
        errors: list = [None] * len(instances)
        # env[i][s] is the output tuple of stage s for instance i; stage 0 is the method inputs
        env: list[list[tuple]] = [[tuple(inst[name] for name in method.input_names)] for inst in instances]
        for index, stage in enumerate(method.stages, start=1):
            live = [i for i, err in enumerate(errors) if err is None]
            if not live:
                break
            args = [tuple(env[i][p.stage][p.index] for p in stage.args) for i in live]
            if stage.is_model:
                outcomes = self.runners[stage.target].run(0, args)
            elif stage.batch_size is None:
                outcomes = [self._call_one(method, index, stage, a) for a in args]
            else:
                outcomes = self._call_batched(method, index, stage, args)
            for i, outcome in zip(live, outcomes):
                if isinstance(outcome, ServingError):
                    errors[i] = outcome
                else:
                    env[i].append(outcome)
        results: list[InstanceOutcome] = []
        for i, err in enumerate(errors):
            results.append(err if err is not None else self._outputs(method, env[i]))
        return results

    @staticmethod
    def _failure(method: MethodDefinition, index: int, stage: StageDefinition, message: str) -> ServingError:
        return ServingError(SYSTEM_ERROR, f"Call {stage.tag} Failed, method: '{method.name}', stage index(begin with "
                                          f"1): {index}, error msg: {message}")

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
        return self._failure(method, index, stage, f"The outputs number {got} of one instance returned by "
                                                   f"{stage.tag} is not equal to the outputs number {count} registered "
                                                   f"in method {method.name}")

    def _call_one(self, method: MethodDefinition, index: int, stage: StageDefinition, args: tuple):
        try:
            out = stage.target(*args)
        except Exception as exc:
            return self._failure(method, index, stage, _message(exc))
        return self._as_outputs(method, index, stage, out)

    def _call_batched(self, method: MethodDefinition, index: int, stage: StageDefinition, args: list[tuple]) -> list:
        """Call a batch function on chunks of ``batch_size`` instances (all of them for 0). If it raises part
        way, the instances it answered keep their results and the rest fail; if it answers a different number of
        instances than it was given, the whole chunk fails."""
        step = stage.batch_size or len(args)
        outcomes: list = []
        for start in range(0, len(args), step):
            chunk = args[start:start + step]
            got: list = []
            try:
                for out in stage.target(list(chunk)):
                    got.append(self._as_outputs(method, index, stage, out))
                    if len(got) > len(chunk):
                        break
            except Exception as exc:
                got.extend([self._failure(method, index, stage, _message(exc))] * (len(chunk) - len(got)))
            if len(got) != len(chunk):
                count = "more than" if len(got) > len(chunk) else f"{len(got)}, not"
                got = [self._failure(method, index, stage, f"{stage.tag} returned {count} the {len(chunk)} instances "
                                                           f"provided to it")] * len(chunk)
            outcomes.extend(got)
        return outcomes

    @staticmethod
    def _outputs(method: MethodDefinition, env: list[tuple]) -> InstanceOutcome:
        outputs = {}
        for name, p in zip(method.output_names, method.outputs):
            try:
                outputs[name] = to_output_value(env[p.stage][p.index])
            except TypeError as exc:
                return ServingError(SYSTEM_ERROR, f"Method '{method.name}' output '{name}': {exc}")
        return outputs
