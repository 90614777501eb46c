"""MindSpore Serving's RESTful values: a JSON value of an instance as the tensor a method input gets, and an
output tensor as the JSON value of a reply.

Typing rules (MindSpore Serving's documented ones, where it has them):
- a JSON integer is int32 and a JSON number with a fraction or exponent float32 (values outside their range are
  refused, not wrapped); ``true``/``false`` are bool; a JSON string is a str input (UTF-8);
- a nested array of them is a tensor of its shape: all booleans (bool), all integers (int32), or numbers with at
  least one non-integer (float32: integers are taken as floats there). Rows must agree in length; an empty array
  has no data type (send ``{"b64": "", "type": ..., "shape": [..., 0, ...]}``); an array of one string or one b64
  object is that value;
- ``{"b64": "<base64>", "type": "<type>", "shape": [dims]}`` is raw little-endian data of any type: ``type`` is
  one of int8, int16, int32, int64, uint8, uint16, uint32, uint64, float16 (fp16), float32 (fp32), float64 (fp64),
  bool, str, bytes (the default); ``shape`` defaults to ``[1]`` (str and bytes are one element: ``[]`` or
  ``[1]``). The decoded size must be exactly what shape and type need; nothing is allocated from the shape.

Replies: numeric tensors as JSON numbers (nested lists of their shape, a bare number for a 0-d tensor), bool as
JSON booleans, str as JSON strings, bytes as ``{"b64": "<base64>"}``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from mindserve import _dtypes
from mindserve._errors import clip
from mindserve._frontends import json_tensors
from mindserve._frontends.tensor_checks import check_data_size, check_utf8, invalid_input
from mindserve._tensor import RawTensor

B64_TYPES = {
    "int8": _dtypes.MS_INT8,
    "int16": _dtypes.MS_INT16,
    "int32": _dtypes.MS_INT32,
    "int64": _dtypes.MS_INT64,
    "uint8": _dtypes.MS_UINT8,
    "uint16": _dtypes.MS_UINT16,
    "uint32": _dtypes.MS_UINT32,
    "uint64": _dtypes.MS_UINT64,
    "float16": _dtypes.MS_FLOAT16,
    "fp16": _dtypes.MS_FLOAT16,
    "float32": _dtypes.MS_FLOAT32,
    "fp32": _dtypes.MS_FLOAT32,
    "float64": _dtypes.MS_FLOAT64,
    "fp64": _dtypes.MS_FLOAT64,
    "bool": _dtypes.MS_BOOL,
    "str": _dtypes.MS_STRING,
    "bytes": _dtypes.MS_BYTES,
}
_B64_KEYS = ("b64", "type", "shape")
_ONE_TEXT = "Instance tensor check failed: bytes or string type shape batch size can only be 1"


def to_tensor(name: str, value: Any) -> RawTensor:
    """The tensor of input ``name`` given as ``value``; InvalidInput naming the problem."""
    kind = type(value)
    if kind is dict:
        return _b64_object(name, value)
    if kind is str:
        return RawTensor(_dtypes.MS_STRING, (), json_tensors.encode_text(name, value))
    if value is None:
        raise invalid_input(name, "Tensor check failed: null is not a tensor value")
    shape, flat = json_tensors.nested(name, value)
    types = json_tensors.kinds(flat)
    if types and types <= {str, dict}:
        if len(flat) != 1:
            raise invalid_input(name, _ONE_TEXT)
        return to_tensor(name, flat[0])
    if not flat:
        raise invalid_input(
            name,
            f"Tensor check failed: the empty JSON array of shape {list(shape)} has no data "
            f'type, send it as {{"b64": "", "type": ..., "shape": {list(shape)}}}',
        )
    if types == {bool}:
        code, label = _dtypes.MS_BOOL, "bool"
    elif types == {int}:
        code, label = _dtypes.MS_INT32, "int32"
    elif types <= {int, float}:
        code, label = _dtypes.MS_FLOAT32, "float32"
    else:
        raise invalid_input(
            name,
            f"Tensor check failed: the JSON array holds {json_tensors.describe(types)}: a "
            f"tensor's elements are all booleans or all numbers",
        )
    return RawTensor(code, shape, json_tensors.pack_numbers(name, flat, code, label))


def _b64_object(name: str, value: dict) -> RawTensor:
    for key in value:
        if key not in _B64_KEYS:
            raise invalid_input(
                name, f"Tensor check failed: unknown key '{clip(key)}' in a b64 object, it takes b64, type and shape"
            )
    text = value.get("b64")
    if type(text) is not str:
        raise invalid_input(name, "Tensor check failed: a b64 object needs 'b64', a JSON string of base64 data")
    type_name = value.get("type", "bytes")
    code = B64_TYPES.get(type_name) if type(type_name) is str else None
    if code is None:
        raise invalid_input(
            name,
            f"Tensor check failed: type {clip(repr(type_name))} of a b64 object invalid, it "
            f"should be one of {', '.join(B64_TYPES)}",
        )
    shape = json_tensors.check_dims(name, value["shape"]) if "shape" in value else (1,)
    text_type = code in (_dtypes.MS_STRING, _dtypes.MS_BYTES)
    if text_type and shape not in ((), (1,)):
        raise invalid_input(
            name,
            f"Instance tensor check failed: bytes or string type input shape can only be "
            f"(1,) or empty, but given shape is {list(shape)}",
        )
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid_input(name, f"Tensor check failed: 'b64' is not valid base64 data: {exc}") from None
    if code == _dtypes.MS_STRING:
        check_utf8(name, data)
    if text_type:
        return RawTensor(code, (), data)
    check_data_size(name, code, shape, len(data))
    return RawTensor(code, shape, data)


def to_json(tensor: RawTensor) -> Any:
    """An output tensor as a reply's JSON value."""
    code = tensor.dtype
    if code == _dtypes.MS_STRING:
        return bytes(tensor.data).decode(errors="replace")
    if code == _dtypes.MS_BYTES:
        return {"b64": base64.b64encode(tensor.data).decode()}
    return json_tensors.to_list(code, tuple(tensor.shape), tensor.data)


def stacked_to_json(code: int, row_shape: tuple, count: int, data: Any) -> list:
    """``count`` rows of one output, back to back, as one JSON value per row."""
    return json_tensors.to_list(code, (count, *row_shape), data)
