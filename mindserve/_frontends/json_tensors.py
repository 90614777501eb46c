"""JSON arrays as tensors: their shape (rectangular, or refused), their elements checked against a data type and
packed as little-endian bytes, and tensors written back as JSON. Shared by the v2 JSON tensor data and MindSpore
Serving's instance values; every error is the detail of ``invalid_input``, naming the input."""

from __future__ import annotations

import math
from itertools import chain
from typing import Any

import numpy as np

from mindserve import _dtypes
from mindserve._dispatch.limits import check_tensor_dims
from mindserve._errors import clip
from mindserve._frontends.tensor_checks import invalid_input

INT_CODES = frozenset(
    {
        _dtypes.MS_INT8,
        _dtypes.MS_INT16,
        _dtypes.MS_INT32,
        _dtypes.MS_INT64,
        _dtypes.MS_UINT8,
        _dtypes.MS_UINT16,
        _dtypes.MS_UINT32,
        _dtypes.MS_UINT64,
    }
)
FLOAT_CODES = frozenset({_dtypes.MS_FLOAT16, _dtypes.MS_FLOAT32, _dtypes.MS_FLOAT64})
MAX_DIM = (1 << 63) - 1  # dims travel as int64

_KIND = {
    bool: "booleans",
    int: "integers",
    float: "numbers",
    str: "strings",
    dict: "objects",
    list: "arrays",
    type(None): "nulls",
}


def nested(name: str, value: Any) -> tuple[tuple, list]:
    """The shape of a (possibly nested) JSON array and its elements in row-major order; a value that is not an
    array is a 0-d tensor of one element. Rows of different lengths are refused."""
    if type(value) is not list:
        return (), [value]
    depth, first = 0, value  # type: tuple[int, Any]
    while type(first) is list:  # the dims, counted along the first elements before any row is walked
        depth += 1
        first = first[0] if first else None
    check_tensor_dims(name, depth)
    shape: list[int] = []
    level = [value]
    while level and type(level[0]) is list:
        size = len(level[0])
        for row in level:
            if type(row) is not list or len(row) != size:
                raise invalid_input(
                    name,
                    f"Tensor check failed: the JSON array is ragged, its rows at depth "
                    f"{len(shape)} differ in length or nesting",
                )
        shape.append(size)
        level = list(chain.from_iterable(level))
    if level and list in set(map(type, level)):
        raise invalid_input(
            name,
            f"Tensor check failed: the JSON array is ragged, its rows at depth {len(shape)} "
            f"differ in length or nesting",
        )
    return tuple(shape), level


def kinds(values: list) -> set:
    return set(map(type, values))


def describe(types: set) -> str:
    return " and ".join(sorted(_KIND.get(t, t.__name__) for t in types))


def pack_numbers(name: str, values: list, code: int, label: str) -> bytes:
    """``values`` (JSON booleans or numbers) as the little-endian bytes of data type ``code``: booleans only for
    BOOL, integers only for the integer types (in their range), integers or numbers for the float types (within
    the type's finite range). ``label`` names the type in error texts."""
    types = kinds(values)
    allowed: set[type]
    if code == _dtypes.MS_BOOL:
        allowed = {bool}
        wanted = "booleans"
    elif code in INT_CODES:
        allowed = {int}
        wanted = "integers"
    elif code in FLOAT_CODES:
        allowed = {int, float}
        wanted = "numbers"
    else:
        raise invalid_input(name, f"Tensor check failed: {label} input data cannot be given as JSON")
    if not types <= allowed:
        raise invalid_input(
            name,
            f"Tensor check failed: {label} input data should be JSON {wanted}, but it holds "
            f"{describe(types - allowed)}",
        )
    dtype = _dtypes.NUMPY_OF[code]
    if values and code in INT_CODES:
        info = np.iinfo(dtype)
        for bound in (min(values), max(values)):
            if not info.min <= bound <= info.max:
                raise invalid_input(name, f"Tensor check failed: input value {bound} is out of the range of {label}")
    array = np.array(values, dtype=dtype)
    if values and code != _dtypes.MS_FLOAT64 and code in FLOAT_CODES:
        # a finite number too large for the type would silently become infinity
        wide = np.array(values, dtype=np.float64)
        finite = wide[np.isfinite(wide)]
        if finite.size and np.abs(finite).max() > np.finfo(dtype).max:
            raise invalid_input(
                name,
                f"Tensor check failed: input value {float(finite[np.abs(finite).argmax()])!r} "
                f"is out of the range of {label}",
            )
    return array.tobytes()


def encode_text(name: str, value: str) -> bytes:
    """A JSON string's UTF-8 bytes (JSON can spell lone surrogates, which have none)."""
    try:
        return value.encode()
    except UnicodeEncodeError:
        raise invalid_input(name, "Instance tensor check failed: string input is not valid UTF-8") from None


def check_dims(name: str, dims: Any) -> tuple:
    """A shape given in JSON: a list of integers in [0, 2**63 - 1]."""
    if type(dims) is not list or any(type(d) is not int for d in dims):
        raise invalid_input(
            name, f"Tensor check failed: input shape {clip(repr(dims))} invalid, it should be a list of integers"
        )
    check_tensor_dims(name, len(dims))
    if any(d < 0 or d > MAX_DIM for d in dims):
        raise invalid_input(name, f"Tensor check failed: input shape {dims} invalid")
    return tuple(dims)


def to_list(code: int, shape: tuple, data: Any) -> Any:
    """A numeric tensor as JSON: nested lists of ``shape`` (a bare value for a 0-d tensor)."""
    array = np.frombuffer(data, dtype=_dtypes.NUMPY_OF[code], count=math.prod(shape))
    return array.reshape(shape).tolist()
