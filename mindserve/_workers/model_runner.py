"""Runs a declared model on lists of instances: checks each instance's inputs against the model, stacks them
into batches of the model's batch size (padding a fixed batch), runs, and splits the outputs back."""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import numpy as np

from mindserve import _dtypes
from mindserve._backends import BackendSession, TensorSpec
from mindserve._errors import FAILED, INVALID_INPUTS, ServingError
from mindserve._servable.definition import Model
from mindserve._workers.batching import stack_rows
from mindserve._workers.columns import Column

InstanceResult = Union[tuple, ServingError]


def isolated(
    run: Callable[[int, int], Union[list, ServingError]], start: int, stop: int
) -> list[tuple[int, int, Union[list, ServingError]]]:
    """``run(start, stop)`` over rows [start, stop), as ``(start, stop, outcome)`` spans. When a run of several
    rows fails, each half runs again on its own (and so on down to single rows), so that only the rows that make
    the runtime fail carry its error: a batch may hold instances of several requests, and one client's bad
    instance (an index out of an embedding's range, say) must not fail another's."""
    outcome = run(start, stop)
    if not isinstance(outcome, ServingError) or stop - start <= 1:
        return [(start, stop, outcome)]
    middle = (start + stop) // 2
    return isolated(run, start, middle) + isolated(run, middle, stop)


def _numpy_terms(dtype: object, shape: Sequence[int]) -> str:
    """A tensor as numpy names it: ``float32 [13]`` (-1 for a variable dim)."""
    return f"{dtype} {list(shape)}"


def _value_terms(value: object) -> str:
    if isinstance(value, np.ndarray):
        return _numpy_terms(value.dtype, value.shape)
    return type(value).__name__


def _type_name(value) -> str:
    if isinstance(value, str):
        return _dtypes.NAME_OF[_dtypes.MS_STRING]
    if isinstance(value, bytes):
        return _dtypes.NAME_OF[_dtypes.MS_BYTES]
    if not isinstance(value, np.ndarray):  # what a Python stage gave a model input: a dict, a list, ...
        return type(value).__name__
    code = _dtypes.code_of_array(value)
    return _dtypes.NAME_OF[code] if code is not None else str(getattr(value, "dtype", type(value).__name__))


class ModelRunner:
    """A loaded model (one backend session per subgraph) as the stages of a method use it."""

    def __init__(self, model: Model, sessions: list[BackendSession], max_batch_size: Optional[int] = None):
        self.model = model
        self.sessions = sessions
        self.max_batch_size = max_batch_size

    def check_counts(self, inputs_count: int, outputs_count: int) -> None:
        """Raise when add_stage's argument or output counts differ from the model's (checked at load). add_stage
        runs subgraph 0, so only that one is checked: other subgraphs may take and give other counts."""
        session = self.sessions[0]
        for what, given, actual in (
            ("inputs", inputs_count, len(session.inputs)),
            ("outputs", outputs_count, len(session.outputs)),
        ):
            if given != actual:
                raise RuntimeError(
                    f"The {what} count {given} in register_method not equal to the count {actual} "
                    f"defined in model, model info: {self.model.key}, subgraph: 0"
                )

    def _session(self, subgraph: int) -> BackendSession:
        if isinstance(subgraph, bool) or not isinstance(subgraph, int) or not 0 <= subgraph < len(self.sessions):
            raise ServingError(
                FAILED,
                f"Model({self.model.key}).call() failed: The model does not have subgraph of "
                f"index {subgraph}, the subgraph count of the model is {len(self.sessions)}",
            )
        return self.sessions[subgraph]

    def _instance_shape(self, spec: TensorSpec) -> tuple[int, ...]:
        return spec.shape[1:] if self.model.with_batch_dim else spec.shape

    def _takes(self, spec: TensorSpec, given: str) -> str:
        """What follows MindSpore's text of a mismatch (clients may match its start): the model input by name,
        what it takes and what it was given, in numpy's terms."""
        file = self.model.files[0] if len(self.model.files) == 1 else self.model.key
        return (
            f": input '{spec.name}' of model {file} takes "
            f"{_numpy_terms(_dtypes.NUMPY_OF.get(spec.dtype, 'unknown'), self._instance_shape(spec))}, given "
            f"{given}"
        )

    def _check_input(self, index: int, spec: TensorSpec, value) -> np.ndarray:
        """The instance's value for model input ``index``, reshaped to the model's instance shape; raises
        ServingError(INVALID_INPUTS) with MindSpore Serving's texts when dtype or size differ."""
        if not isinstance(value, np.ndarray) or _dtypes.code_of_array(value) != spec.dtype:
            raise ServingError(
                INVALID_INPUTS,
                f"Given model input {index} data type {_type_name(value)} not match the "
                f"data type {_dtypes.NAME_OF.get(spec.dtype)} defined in model"
                + self._takes(spec, _value_terms(value)),
            )
        shape = self._instance_shape(spec)
        if all(d >= 0 for d in shape):
            expected = math.prod(shape) * value.itemsize
            if value.nbytes != expected:
                raise ServingError(
                    INVALID_INPUTS,
                    f"Given model input {index} size {value.nbytes} not match the size "
                    f"{expected} defined in model" + self._takes(spec, _value_terms(value)),
                )
            return value.reshape(shape)
        if len(value.shape) != len(shape) or any(d >= 0 and d != g for d, g in zip(shape, value.shape)):
            raise ServingError(
                INVALID_INPUTS,
                f"Given model input {index} shape {list(value.shape)} not match the "
                f"shape {list(shape)} defined in model" + self._takes(spec, _value_terms(value)),
            )
        return value

    @staticmethod
    def fixed_batch_size(session: BackendSession) -> Optional[int]:
        """Dim 0 of the first input when the model fixes it, else None."""
        shape = session.inputs[0].shape if session.inputs else ()
        return shape[0] if shape and shape[0] > 0 else None

    def check_column(self, index: int, spec: TensorSpec, kind: tuple[np.dtype, tuple]) -> tuple[int, ...]:
        """The instance shape a stacked column of (dtype, row shape) ``kind`` feeds model input ``index`` as;
        raises ServingError(INVALID_INPUTS) with the same texts as ``_check_input`` gives each instance."""
        dtype, row_shape = kind
        given_terms = _numpy_terms(dtype, row_shape)
        if _dtypes.CODE_OF.get(dtype) != spec.dtype:
            raise ServingError(
                INVALID_INPUTS,
                f"Given model input {index} data type {_type_name(np.empty(0, dtype))} "
                f"not match the data type {_dtypes.NAME_OF.get(spec.dtype)} defined "
                f"in model" + self._takes(spec, given_terms),
            )
        shape = self._instance_shape(spec)
        if all(d >= 0 for d in shape):
            given, expected = math.prod(row_shape) * dtype.itemsize, math.prod(shape) * dtype.itemsize
            if given != expected:
                raise ServingError(
                    INVALID_INPUTS,
                    f"Given model input {index} size {given} not match the size "
                    f"{expected} defined in model" + self._takes(spec, given_terms),
                )
            return shape
        if len(row_shape) != len(shape) or any(d >= 0 and d != g for d, g in zip(shape, row_shape)):
            raise ServingError(
                INVALID_INPUTS,
                f"Given model input {index} shape {list(row_shape)} not match the "
                f"shape {list(shape)} defined in model" + self._takes(spec, given_terms),
            )
        return row_shape

    def run_columns(self, columns: list[Column]) -> Optional[tuple[list[Column], dict[int, ServingError]]]:
        """Run subgraph 0 on whole stacked columns: rows go to the model in batches without a per-instance
        step. Returns the output columns and the errors of instances whose run failed (their rows are None),
        or None when the columns are not all stacked (or the model has no batch dim): then ``run`` takes
        the instances one by one. Raises ServingError when a column does not fit the model at all."""
        session = self.sessions[0]
        found = [c.stacked_type() for c in columns]
        kinds = [kind for kind in found if kind is not None]
        if (
            not self.model.with_batch_dim
            or len(columns) != len(session.inputs)
            or len(kinds) < len(found)
            or not columns
        ):
            return None
        count = columns[0].count
        shapes = [self.check_column(k, spec, kind) for k, (spec, kind) in enumerate(zip(session.inputs, kinds))]
        fixed = self.fixed_batch_size(session)
        step = fixed or self.max_batch_size or count
        outputs: list[list] = [[] for _ in session.outputs]
        errors: dict[int, ServingError] = {}

        def run(start: int, stop: int) -> Union[list, ServingError]:
            feeds = [
                stack_rows(c.pieces(start, stop), fixed or stop - start, shape, kind[0])
                for c, shape, kind in zip(columns, shapes, kinds)
            ]
            return self.run_rows(session, feeds, stop - start)

        for start in range(0, count, step):
            for first, stop, ran in isolated(run, start, min(count, start + step)):
                if isinstance(ran, ServingError):
                    errors.update((i, ran) for i in range(first, stop))
                    ran = [[None] * (stop - first)] * len(outputs)
                for chunks, rows in zip(outputs, ran):
                    chunks.append(rows)
        return [Column(chunks) for chunks in outputs], errors

    def run_rows(self, session: BackendSession, feeds: list, rows: int) -> Union[list, ServingError]:
        """The model's outputs for one batch, cut to its ``rows`` real rows (padding dropped); the error for
        all of them when the run fails or an output has no batch dim."""
        try:
            outputs = session.run(feeds)
        except Exception as exc:  # the runtime's own error, for these instances only
            return ServingError(FAILED, f"Model({self.model.key}) run failed: {exc}")
        for j, out in enumerate(outputs):
            if out.ndim == 0 or out.shape[0] < rows:
                return ServingError(
                    FAILED,
                    f"Model({self.model.key}) output {j} shape {list(out.shape)} has no batch dim of {rows} instances",
                )
        return [out[:rows] for out in outputs]

    def run(self, subgraph: int, instances: Sequence[tuple]) -> list[InstanceResult]:
        """One output tuple, or a ServingError, per instance, in order."""
        session = self._session(subgraph)
        results: list[Optional[InstanceResult]] = [None] * len(instances)
        ready: dict[tuple, list[int]] = {}  # instances grouped by input shapes, so that each group can stack
        checked: list[list[np.ndarray]] = [[] for _ in instances]
        for i, inputs in enumerate(instances):
            if len(inputs) != len(session.inputs):
                results[i] = ServingError(
                    FAILED,
                    f"Model({self.model.key}).call() failed: The inputs count "
                    f"{len(inputs)} of instance {i} is not equal to the inputs count "
                    f"{len(session.inputs)} of the model",
                )
                continue
            try:
                checked[i] = [self._check_input(k, spec, v) for k, (spec, v) in enumerate(zip(session.inputs, inputs))]
            except ServingError as err:
                results[i] = err
                continue
            ready.setdefault(tuple(a.shape for a in checked[i]), []).append(i)
        for members in ready.values():
            if self.model.with_batch_dim:
                self._run_batched(session, members, checked, results)
            else:
                for i in members:
                    try:
                        results[i] = tuple(session.run(checked[i]))
                    except Exception as exc:  # the runtime's own error, for this instance only
                        results[i] = ServingError(FAILED, f"Model({self.model.key}) run failed: {exc}")
        return results  # type: ignore[return-value]

    def _run_batched(self, session: BackendSession, members: list[int], checked: list, results: list) -> None:
        """Run ``members`` in batches: of the model's fixed batch size (the last one padded), or for a variable
        batch dim of at most ``max_batch_size`` instances (all of them when unbounded)."""
        fixed = self.fixed_batch_size(session)
        step = fixed or self.max_batch_size or len(members)

        def run(start: int, stop: int) -> Union[list, ServingError]:
            chunk = members[start:stop]
            feeds = []
            for k in range(len(session.inputs)):
                first = checked[chunk[0]][k]
                feeds.append(stack_rows([checked[i][k] for i in chunk], fixed or len(chunk), first.shape, first.dtype))
            return self.run_rows(session, feeds, len(chunk))

        for start in range(0, len(members), step):
            for first, stop, outputs in isolated(run, start, min(len(members), start + step)):
                for row, i in enumerate(members[first:stop]):
                    results[i] = outputs if isinstance(outputs, ServingError) else tuple(out[row] for out in outputs)
