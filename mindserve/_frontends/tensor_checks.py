"""The checks every protocol's input tensors pass, whatever carried them (MSService, the Open Inference
Protocol on either transport, MindSpore's REST values, Seldon, clients' shared memory), with one set of error
texts.

Nothing is allocated from a declared shape: the byte count implied by shape and dtype is computed with Python
integers (no overflow) and compared with the bytes actually received before anything else is done.
"""

from __future__ import annotations

import math

from mindserve import _dtypes
from mindserve._dispatch.limits import check_tensor_dims
from mindserve._errors import InvalidInput, ServingError, clip


def invalid_input(name: str, detail: str) -> ServingError:
    """The error for a bad tensor of input ``name`` (one text for every protocol)."""
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
        raise invalid_input(
            name,
            f"Tensor check failed: input data size {size} invalid, shape {list(dims)} of "
            f"{_dtypes.NAME_OF[code]} needs {expected} bytes",
        )


def check_utf8(name: str, data: bytes) -> None:
    """Refuse a string input whose bytes are not UTF-8."""
    try:
        data.decode()
    except UnicodeDecodeError:
        raise invalid_input(name, "Instance tensor check failed: string input is not valid UTF-8") from None
