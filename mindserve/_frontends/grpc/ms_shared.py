"""MindSpore Serving's shared memory form in MSService.Predict, on a server that allows client shared memory:

- an input Tensor may carry ``shm_data`` (ShmTensorData {memory_key, bytes_size, data_offset, data_size}) instead
  of ``data``: its bytes are read from the client's shared memory ``memory_key`` (opened for the request with the
  checks of a registered region, see mindserve._frontends.shared_memory.regions): exactly its shape's bytes, and
  within what the request may carry (the server's max_msg_mb_size), both checked before anything is read; a
  request that reads a megabyte or more is checked off the event loop (``large_reads``);
- an Instance may carry ``output_buffers`` (output name -> ShmTensorData): that output is written there, and the
  reply's tensor for it carries the same ``shm_data`` and no data. MindSpore's rules: each key is an output of
  the method; ``data_size`` equals the result's byte size; str and bytes outputs cannot go to shared memory.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from mindserve import _dtypes
from mindserve._errors import FeatureDisabled, InvalidInput, clip
from mindserve._frontends.shared_memory.client_file import LARGE_READ
from mindserve._frontends.shared_memory.regions import Lease
from mindserve._frontends.shared_memory.tensors import DISABLED
from mindserve._frontends.tensor_checks import check_dims, invalid_input
from mindserve._proto import ms_service_pb2 as pb
from mindserve._tensor import RawTensor


class SharedReply(RawTensor):
    """An output written into the client's shared memory: the reply's tensor carries ``data`` (a serialized
    ShmTensorData) as its ``shm_data`` field instead of tensor bytes."""


def shared_tensor(name: str, tensor: Any, lease: Optional[Lease]) -> RawTensor:
    """Input ``name`` read from the client's shared memory its ``shm_data`` names."""
    if lease is None:  # (worded as MindSpore words an input's errors)
        raise invalid_input(name, f"Tensor check failed: {DISABLED}")
    dims = tuple(tensor.shape.dims)
    check_dims(name, dims)
    dtype = _dtypes.NUMPY_OF.get(tensor.dtype)
    if dtype is None:
        raise invalid_input(name, "Tensor check failed: only numeric tensors can come from shared memory")
    shm = tensor.shm_data
    expected = math.prod(dims) * dtype.itemsize
    if shm.data_size != expected:
        raise invalid_input(
            name,
            f"Tensor check failed: shm_data data_size {shm.data_size} does not match the size "
            f"{expected} of its shape {list(dims)} and data type {dtype}",
        )
    what = f"input {clip(name)}"
    lease.check_read(shm.data_size, what)  # within what the request may carry, before anything is opened or read
    region = lease.by_key(shm.memory_key, shm.bytes_size)
    data = lease.read(region, shm.data_offset, shm.data_size, what)
    return RawTensor(tensor.dtype, dims, data.data)


def large_reads(request: Any) -> bool:
    """Whether the request's ``shm_data`` inputs read so much (as declared) that checking its instances must run
    off the event loop."""
    total = 0
    for instance in request.instances:
        for tensor in instance.items.values():
            if tensor.WhichOneof("tensor_data") == "shm_data":
                total += tensor.shm_data.data_size
                if total >= LARGE_READ:
                    return True
    return False


def output_buffers(request: Any, outputs: tuple, lease: Optional[Lease]) -> dict[int, dict[str, Any]]:
    """Each instance's output buffers (instance index -> output name -> ShmTensorData), checked."""
    found: dict[int, dict[str, Any]] = {}
    for i, instance in enumerate(request.instances):
        if not instance.output_buffers:
            continue
        if lease is None:
            raise FeatureDisabled(DISABLED)
        for name in instance.output_buffers:
            if name not in outputs:
                raise InvalidInput(
                    f"Instance {i} has an output buffer for '{clip(name)}', which is not an output of "
                    f"the method: {', '.join(outputs)}"
                )
        found[i] = {
            name: (buffer, lease.by_key(buffer.memory_key, buffer.bytes_size))
            for name, buffer in instance.output_buffers.items()
        }
    return found


def write_buffers(outputs: dict, buffers: dict[str, Any]) -> dict:
    """An instance's outputs with those it has buffers for written there (and answered as SharedReply)."""
    answered = dict(outputs)
    for name, (buffer, region) in buffers.items():
        raw = outputs[name]
        if raw.dtype in (_dtypes.MS_STRING, _dtypes.MS_BYTES):
            kind = "str" if raw.dtype == _dtypes.MS_STRING else "bytes"
            raise InvalidInput(
                f"Output {clip(name)} is {kind}: str and bytes outputs cannot be written to shared memory"
            )
        if buffer.data_size != len(raw.data):
            raise InvalidInput(
                f"Output {clip(name)} is {len(raw.data)} bytes, its output buffer's data_size is {buffer.data_size}"
            )
        region.write(buffer.data_offset, memoryview(raw.data).cast("B"), f"output {clip(name)}")
        answered[name] = SharedReply(
            raw.dtype,
            raw.shape,
            pb.ShmTensorData(
                memory_key=buffer.memory_key,
                bytes_size=buffer.bytes_size,
                data_offset=buffer.data_offset,
                data_size=buffer.data_size,
            ).SerializeToString(),
        )
    return answered
