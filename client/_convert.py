"""Python values <-> MSService tensors, on the client side."""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np

from mindserve import _dtypes
from mindserve._proto import ms_service_pb2 as pb

# Python scalars become 1-element arrays of these types (fixed, not platform-dependent)
_SCALAR_DTYPES = ((bool, np.bool_), (int, np.int64), (float, np.float64))


def _fill_array(tensor: pb.Tensor, array: np.ndarray, name: str) -> None:
    code = _dtypes.code_of_array(array)
    if code is None:
        if array.dtype.byteorder == ">" and array.dtype.newbyteorder("<") in _dtypes.CODE_OF:
            array = array.astype(array.dtype.newbyteorder("<"))
            code = _dtypes.code_of_array(array)
        else:
            raise RuntimeError(f"Unknown data type {array.dtype} of input '{name}': send numbers, bools, str or bytes")
    tensor.dtype = code
    tensor.shape.dims.extend(array.shape)
    tensor.data = array.tobytes()


def typed(array: np.ndarray, wanted: Optional[np.dtype]) -> np.ndarray:
    """A list's or Python scalar's array in the data type the method takes (``wanted``, from its metadata) when
    that loses nothing: bools stay bools, integers become any integer type that holds every value or any float
    type, floats any float type. Otherwise (nothing known, or a conversion that would change a value, such as
    1.5 to an integer or 300 to uint8) the array stays as numpy made it, and the server says what it takes."""
    if wanted is None or wanted == array.dtype or array.dtype.kind not in "biuf":
        return array
    kind, target = array.dtype.kind, wanted.kind
    if kind == "b" and target != "b":
        return array
    if kind in "iu" and target in "iu":
        info = np.iinfo(wanted)
        if array.size and (array.min() < info.min or array.max() > info.max):
            return array
        return array.astype(wanted)
    if (kind in "iu" and target == "f") or (kind == "f" and target == "f"):
        return array.astype(wanted)
    return array


def fill_tensor(tensor: pb.Tensor, name: str, value: Any, wanted: Optional[np.dtype] = None) -> None:
    """Encode one input value: numpy arrays and scalars keep dtype and shape; lists and tuples become the numpy
    array numpy makes of them (ints int64, floats float64, bools bool); bool/int/float become 1-element
    bool/int64/float64 arrays; str and bytes become single-item string/bytes tensors. ``wanted``: the data type
    the method takes for this input (its metadata), which lists and Python scalars are given where that loses
    nothing (``typed``)."""
    if isinstance(value, (np.ndarray, np.generic)) and not isinstance(value, (np.str_, np.bytes_)):
        _fill_array(tensor, np.asarray(value), name)
        return
    if isinstance(value, (list, tuple)):
        try:
            array = np.asarray(value)
        except (ValueError, OverflowError) as exc:  # ragged rows, ints past int64
            raise RuntimeError(f"The list of input '{name}' is not a tensor: {exc}") from None
        if array.dtype.kind not in "biuf":
            raise RuntimeError(
                f"The list of input '{name}' is not a tensor of numbers or bools (numpy makes it "
                f"{array.dtype}); send str and bytes values one per input"
            )
        _fill_array(tensor, typed(array, wanted), name)
        return
    if isinstance(value, str):
        tensor.dtype = _dtypes.MS_STRING
        tensor.shape.dims.append(1)
        tensor.bytes_val.append(value.encode())
        return
    if isinstance(value, bytes):
        tensor.dtype = _dtypes.MS_BYTES
        tensor.shape.dims.append(1)
        tensor.bytes_val.append(value)
        return
    for python_type, dtype in _SCALAR_DTYPES:
        if isinstance(value, python_type):
            try:
                array = np.array((value,), dtype=dtype)
            except OverflowError:
                raise RuntimeError(f"The value {value} of input '{name}' is out of the int64 range") from None
            _fill_array(tensor, typed(array, wanted), name)
            return
    raise RuntimeError(f"Not support value type {type(value)} of input '{name}'")


def value_of(tensor: pb.Tensor) -> Union[np.ndarray, str, bytes, list]:
    """Decode one output tensor: numeric tensors as numpy arrays of their shape; a single-item string or bytes
    tensor as str / bytes (several items: a list)."""
    if tensor.dtype == _dtypes.MS_STRING:
        items = [b.decode() for b in tensor.bytes_val]
        return items[0] if len(items) == 1 else items
    if tensor.dtype == _dtypes.MS_BYTES:
        items = list(tensor.bytes_val)
        return items[0] if len(items) == 1 else items
    dtype = _dtypes.NUMPY_OF.get(tensor.dtype)
    if dtype is None:
        raise RuntimeError(f"Unknown data type {tensor.dtype} in the reply")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape.dims))
