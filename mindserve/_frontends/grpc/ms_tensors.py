"""MSService tensors <-> the server's RawTensor: a client's tensor through every check
(``mindserve._frontends.tensor_checks``), an output into its reply tensor."""

from __future__ import annotations

from mindserve import _dtypes
from mindserve._frontends.tensor_checks import check_data_size, check_dims, check_utf8, invalid_input
from mindserve._proto import ms_service_pb2 as pb
from mindserve._tensor import RawTensor

_TEXT_TYPES = _dtypes.TEXT_CODES


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
            raise invalid_input(
                name,
                f"Tensor check failed: bytes_val is only for string and bytes tensors, not {_dtypes.NAME_OF[code]}",
            )
        data = tensor.data
        check_data_size(name, code, dims, len(data))
        return RawTensor(code, dims, data)
    if code in _TEXT_TYPES:
        if len(tensor.bytes_val) != 1:
            raise invalid_input(
                name, "Instance tensor check failed: bytes or string type shape batch size can only be 1"
            )
        if dims not in ((), (1,)):
            raise invalid_input(
                name,
                f"Instance tensor check failed: bytes or string type input shape can only be "
                f"(1,) or empty, but given shape is {list(dims)}",
            )
        data = tensor.bytes_val[0]
        if code == _dtypes.MS_STRING:
            check_utf8(name, data)
        return RawTensor(code, (), data)
    label = _dtypes.NAME_OF.get(code, str(code))
    raise invalid_input(
        name,
        f"Tensor check failed: input data type {label} invalid: the data types are "
        f"{', '.join(f'{pb.DataType.Name(c)} {c}' for c in sorted(_dtypes.NAME_OF) if c)}",
    )


def tensor_to_proto(raw: RawTensor, tensor: pb.Tensor) -> None:
    """Fill ``tensor`` from an output; str and bytes outputs become single-item tensors of shape [1]."""
    tensor.dtype = raw.dtype
    if raw.dtype in _TEXT_TYPES:
        tensor.shape.dims.append(1)
        tensor.bytes_val.append(bytes(raw.data))
    else:
        tensor.shape.dims.extend(raw.shape)
        tensor.data = bytes(raw.data)
