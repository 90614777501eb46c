"""Tensors of the Open Inference Protocol, independent of how a transport carries their data.

- dim 0 of every input is the instance: instance i gets ``input[i]`` of every input, so all inputs agree on dim 0;
  each output stacks the instances' results along dim 0 (they must agree in data type and shape).
- a BYTES input carries one element per instance (shape ``[N]`` or ``[N, 1]``). Python stages get it as ``bytes``,
  or as ``str`` when the method input feeds a string model input or the client marks the tensor as text
  (``content_type: "str"``, MLServer's convention); str and bytes outputs both answer as BYTES of shape ``[N]``.
- raw BYTES data is each element's 4-byte little-endian length followed by its bytes (the gRPC
  ``raw_input_contents`` and the HTTP binary tensor data extension agree on it).

Every size is checked against the data actually received before anything is made from a declared shape.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional, Union

import numpy as np

from mindserve import _dtypes
from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._dispatch.limits import too_many_instances
from mindserve._dispatch.route import MethodSignature, Route, TensorSpec
from mindserve._errors import InvalidInput, StageFailed, clip, missing_input
from mindserve._frontends.oip.models import Model
from mindserve._frontends.tensor_checks import check_data_size, check_dims, check_utf8, invalid_input
from mindserve._tensor import RawTensor, Results, StackedInput, StackedInputs

TEXT_TYPES = (_dtypes.MS_STRING, _dtypes.MS_BYTES)
_LENGTH = struct.Struct("<I")

Data = Union[bytes, bytearray, memoryview]


class InputTensor:
    """One input tensor of a request as its transport gave it; subclasses know where its data lies. ``shape`` is
    the declared shape (a tuple of ints), ``as_str`` whether the client marked a BYTES tensor as text."""

    def __init__(self, name: str, datatype: str, shape: tuple, as_str: bool = False):
        self.name = name
        self.datatype = datatype
        self.shape = shape
        self.as_str = as_str

    def numeric_data(self, code: int) -> Data:
        """The little-endian bytes of a numeric tensor of type ``code``, checked against ``shape``."""
        raise NotImplementedError

    def bytes_items(self, count: int) -> list:
        """The ``count`` elements of a BYTES tensor, each ``bytes``."""
        raise NotImplementedError


class RawInput(InputTensor):
    """A tensor whose data came raw: gRPC ``raw_input_contents``, or the HTTP binary tensor data extension."""

    def __init__(self, name: str, datatype: str, shape: tuple, data: Data, as_str: bool = False):
        super().__init__(name, datatype, shape, as_str)
        self.data = data

    def numeric_data(self, code: int) -> Data:
        check_data_size(self.name, code, self.shape, len(self.data))
        return memoryview(self.data)

    def bytes_items(self, count: int) -> list:
        return split_bytes(self.name, self.data, self.shape, count)


def split_bytes(name: str, data: Data, dims: tuple, count: int) -> list:
    """The elements of a raw BYTES tensor (each a 4-byte little-endian length and that many bytes); every length
    is checked against the bytes left, and parsing stops past ``count`` elements."""
    items: list[bytes] = []
    offset, size = 0, len(data)
    view = memoryview(data)
    while offset < size and len(items) <= count:
        if size - offset < 4:
            raise invalid_input(
                name,
                f"Tensor check failed: BYTES input data is malformed, element {len(items)} "
                f"has {size - offset} of its 4 length bytes",
            )
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += 4
        if length > size - offset:
            raise invalid_input(
                name,
                f"Tensor check failed: BYTES input data is malformed, element {len(items)} "
                f"declares {length} bytes, {size - offset} are left",
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count or offset != size:
        held = f"more than {count}" if len(items) > count else str(len(items))
        raise invalid_input(
            name, f"Tensor check failed: BYTES input data holds {held} elements, shape {list(dims)} needs {count}"
        )
    return items


def join_bytes(items: Sequence) -> bytes:
    """Raw BYTES data: each element's 4-byte little-endian length, then its bytes."""
    parts = []
    for data in items:
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def instances(
    model: Model, signature: MethodSignature, tensors: Sequence[InputTensor], max_instances: int
) -> Sequence[dict[str, RawTensor]]:
    """The request's inputs cut into instances along dim 0 (at most ``max_instances`` of them), every size checked
    before the data is used: a
    StackedInputs over the request's own bytes when every input is numeric (the transport copies each input
    into shared memory whole), else a list of one dict per instance."""
    position: dict[str, int] = {}
    for k, tensor in enumerate(tensors):
        if tensor.name in position:
            raise InvalidInput(f"Input {clip(tensor.name)} is given more than once")
        position[tensor.name] = k
    names = signature.inputs
    for name in names:
        if name not in position:
            raise missing_input(name, "request inputs", model.servable, model.method, names, list(position))
    for name in position:
        if name not in names:
            raise InvalidInput(
                f"Unexpected input {clip(name)} in request inputs , servable {clip(model.servable)}, "
                f"method {clip(model.method)} takes {', '.join(names)}"
            )
    if not names:
        return [{}]
    ordered = [tensors[position[name]] for name in names]
    count = _instance_count(ordered, model, max_instances)
    specs = signature.input_specs
    # every input's data is checked against its shape (in _column) before any per-instance object is made
    columns: list[Any] = [_column(tensor, count, spec) for tensor, spec in zip(ordered, specs)]
    texts = [isinstance(column, list) for column in columns]  # str / bytes items rather than numeric rows
    if not any(texts):
        return StackedInputs(count, dict(zip(names, columns)))
    rows = [column if text else _rows(column, count) for column, text in zip(columns, texts)]
    return [dict(zip(names, items)) for items in zip(*rows)]


def _instance_count(tensors: list[InputTensor], model: Model, max_instances: int) -> int:
    """Dim 0 of the inputs: the same for all of them, at least 1 and at most ``max_instances``."""
    count = None
    first = ""
    for tensor in tensors:
        dims = tensor.shape
        check_dims(tensor.name, dims)
        if not dims:
            raise invalid_input(tensor.name, "Tensor check failed: input shape [] invalid, dim 0 is the instances")
        if count is None:
            count, first = dims[0], tensor.name
        elif dims[0] != count:
            raise invalid_input(
                tensor.name, f"Tensor check failed: input dim 0 (instances) is {dims[0]}, but input {first} has {count}"
            )
    if not count:  # (None: no inputs, which instances() answers before)
        raise InvalidInput(
            f"Instances count of request cannot be 0, servable: {clip(model.servable)}, method: {clip(model.method)}"
        )
    if count > max_instances:
        # instances whose tensors hold no elements cost no request bytes: bound their number here
        raise too_many_instances(count, max_instances, model.servable, model.method)
    return count


def _column(tensor: InputTensor, count: int, spec: TensorSpec) -> Union[StackedInput, list[RawTensor]]:
    """One input's tensor as ``count`` instance tensors: numeric rows in place, or a list of str/bytes items."""
    name, dims, datatype = tensor.name, tensor.shape, tensor.datatype
    code = _dtypes.CODE_OF_OIP_NAME.get(datatype)
    if code is None:
        raise invalid_input(
            name,
            f"Tensor check failed: input data type {clip(datatype, 32) or '(empty)'} invalid: "
            f"the data types are {', '.join(_dtypes.CODE_OF_OIP_NAME)}",
        )
    if code == _dtypes.MS_BYTES:
        if dims not in ((count,), (count, 1)):
            raise invalid_input(
                name,
                f"Tensor check failed: BYTES input shape can only be [N] or [N, 1], one "
                f"element per instance, but given shape is {list(dims)}",
            )
        items = tensor.bytes_items(count)
        if spec.dtype == _dtypes.MS_STRING or tensor.as_str:
            for item in items:
                check_utf8(name, item)
            return [RawTensor(_dtypes.MS_STRING, (), item) for item in items]
        return [RawTensor(_dtypes.MS_BYTES, (), item) for item in items]
    data = memoryview(tensor.numeric_data(code))
    row = len(data) // count
    return StackedInput(code, tuple(dims[1:]), row, data, np.arange(count, dtype=np.uint64) * np.uint64(row))


def _rows(column: StackedInput, count: int) -> list[RawTensor]:
    """A numeric column as one tensor per instance (views of the request's bytes)."""
    row = column.row_size
    return [RawTensor(column.dtype, column.row_shape, column.source[i * row : (i + 1) * row]) for i in range(count)]


async def run(dispatcher: Dispatcher, route: Route, items: Sequence[dict[str, RawTensor]]) -> Results:
    """The instances' outputs; the protocol has no per-instance error, so the first failed instance fails the
    whole call with its error."""
    results = await dispatcher.run(route, items)
    error = results.first_error()
    if error is not None:
        raise error
    return results


class OutputTensor(NamedTuple):
    """One output of every instance, stacked along dim 0: numeric data in ``data`` (little-endian, row-major), or
    a BYTES tensor's elements in ``items``."""

    name: str
    datatype: str
    shape: list
    data: Optional[Data]
    items: Optional[list]


def stack_output(name: str, results: Results) -> OutputTensor:
    """Stack the instances' values of output ``name`` along dim 0 (a request answered stacked is taken whole)."""
    stacked = results.stacked
    if stacked is not None and name in stacked:
        out = stacked[name]
        return OutputTensor(name, _dtypes.OIP_NAME_OF[out.dtype], [len(results), *out.row_shape], out.data, None)
    items = [r[name] for r in results]
    first = items[0]
    text = first.dtype in TEXT_TYPES
    for i, item in enumerate(items):
        if (item.dtype in TEXT_TYPES) != text or (
            not text and (item.dtype != first.dtype or tuple(item.shape) != tuple(first.shape))
        ):
            raise StageFailed(
                f"Output {name} of instance {i} is {_describe(item)} but that of instance 0 is "
                f"{_describe(first)}: the instances' outputs are stacked along dim 0 and must "
                f"agree in data type and shape"
            )
    if text:
        return OutputTensor(name, "BYTES", [len(items)], None, [bytes(item.data) for item in items])
    return OutputTensor(
        name, _dtypes.OIP_NAME_OF[first.dtype], [len(items), *first.shape], b"".join(item.data for item in items), None
    )


def _describe(item: RawTensor) -> str:
    if item.dtype in TEXT_TYPES:
        return "BYTES"
    return f"{_dtypes.OIP_NAME_OF[item.dtype]} of shape {list(item.shape)}"
