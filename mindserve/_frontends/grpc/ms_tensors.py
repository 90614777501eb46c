"""MSService tensors <-> the server's RawTensor, with every check a client's tensor must pass.

Nothing is allocated from a declared shape: the byte count implied by shape and dtype is computed with Python
integers (no overflow) and compared with the bytes actually received before anything else is done.
"""
from __future__ import annotations

import math

from mindserve import _dtypes
from mindserve._dispatch.limits import check_tensor_dims
from mindserve._errors import InvalidInput, ServingError, clip
from mindserve._proto import ms_service_pb2 as pb
from mindserve._tensor import RawTensor

_TEXT_TYPES = (_dtypes.MS_STRING, _dtypes.MS_BYTES)


def invalid_input(name: str, detail: str) -> ServingError:
    """The error for a bad tensor of input ``name`` (shared by the gRPC frontends, so the texts are one)."""
    return InvalidInput(f"Instances input {clip(name)} check failed, detail: {detail}")



def check_dims(name: str, dims: tuple) -> None:
    """Refuse a shape with more than MAX_TENSOR_DIMS dims, or with a negative dim."""
    check_tensor_dims(name, len(dims))
    if any(d < 0 for d in dims):
        raise invalid_input(name, f"Tensor check failed: input shape {list(dims)} invalid")


def check_data_size(name: str, code: int, dims: tuple, size: int) -> None:
    """Refuse ``size`` bytes of data unless they are exactly what ``dims`` of numeric type ``code`` take (the
    product is a Python int: a huge declared shape cannot overflow, and nothing is allocated from it)."""
    expected = math.prod(dims) * _dtypes.NUMPY_OF[code].itemsize
    if size != expected:
        raise invalid_input(name, f"Tensor check failed: input data size {size} invalid, shape {list(dims)} of "
                                  f"{_dtypes.NAME_OF[code]} needs {expected} bytes")


def check_utf8(name: str, data: bytes) -> None:
    try:
        data.decode()
    except UnicodeDecodeError:
        raise invalid_input(name, "Instance tensor check failed: string input is not valid UTF-8") from None


def tensor_from_proto(name: str, tensor: pb.Tensor) -> RawTensor:
    """The validated tensor of input ``name``; InvalidInput naming the problem otherwise."""
    code = tensor.dtype
    dims = tuple(tensor.shape.dims)
    check_dims(name, dims)
    if tensor.WhichOneof("tensor_data") == "shm_data":
        raise invalid_input(name, "Tensor check failed: shared memory tensor data is not supported by this server")
    dtype = _dtypes.NUMPY_OF.get(code)
    if dtype is not None:
        if tensor.bytes_val:
            raise invalid_input(name, f"Tensor check failed: bytes_val is only for string and bytes tensors, not "
                                      f"{_dtypes.NAME_OF[code]}")
        data = tensor.data
        check_data_size(name, code, dims, len(data))
        return RawTensor(code, dims, data)
    if code in _TEXT_TYPES:
        if len(tensor.bytes_val) != 1:
            raise invalid_input(name, "Instance tensor check failed: bytes or string type shape batch size can only "
                                      "be 1")
        if dims not in ((), (1,)):
            raise invalid_input(name, f"Instance tensor check failed: bytes or string type input shape can only be "
                                      f"(1,) or empty, but given shape is {list(dims)}")
        data = tensor.bytes_val[0]
        if code == _dtypes.MS_STRING:
            check_utf8(name, data)
        return RawTensor(code, (), data)
    label = _dtypes.NAME_OF.get(code, str(code))
    raise invalid_input(name, f"Tensor check failed: input data type {label} invalid")


def tensor_to_proto(raw: RawTensor, tensor: pb.Tensor) -> None:
    """Fill ``tensor`` from an output; str and bytes outputs become single-item tensors of shape [1]."""
    tensor.dtype = raw.dtype
    if raw.dtype in _TEXT_TYPES:
        tensor.shape.dims.append(1)
        tensor.bytes_val.append(bytes(raw.data))
    else:
        tensor.shape.dims.extend(raw.shape)
        tensor.data = bytes(raw.data)
