"""The numpy Client's shared memory (``Client(..., shared_memory=True)``), in MindSpore Serving's form: large input
tensors travel as ``shm_data`` references into a file the client creates in /dev/shm, and large outputs come
back through ``output_buffers`` in the same file, once the client has seen their size (MindSpore's rule: a
buffer's size equals the output's). For servers on this host only (``unix:`` and loopback addresses), started
with ``allow_client_shm``. The client owns its file: it creates it (owner-only), grows it, and removes it at
``close``.
"""

from __future__ import annotations

import ipaddress
import os
import uuid
from typing import Any

from mindserve._proto import ms_service_pb2 as pb

DEFAULT_THRESHOLD = 1 << 20  # tensors of at least this many bytes go through shared memory
ALIGN = 64
TEXT_TYPES = (pb.MS_STRING, pb.MS_BYTES)


def is_local(address: str) -> bool:
    """Whether ``address`` reaches this host: a unix socket or a loopback host."""
    if address.startswith("unix:"):
        return True
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class ClientMemory:
    """One client's shared memory file and what it has learnt of the outputs' sizes."""

    def __init__(self, threshold: int = DEFAULT_THRESHOLD):
        self.threshold = threshold
        self.key = f"/msclient-{uuid.uuid4().hex}"
        self._path = f"/dev/shm{self.key}"
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._size = 0
        # (instance inputs' dtypes and shapes) -> {output: (dtype, shape, bytes)} from earlier replies
        self._outputs: dict[tuple, dict[str, tuple]] = {}

    def _reserve(self, size: int) -> None:
        if size > self._size:
            os.ftruncate(self._fd, size)
            self._size = size

    def place(self, request: pb.PredictRequest) -> list[tuple]:
        """Move the request's large numeric inputs into the file, and ask for large outputs in it where their
        size is known; the signature of each instance (to learn from the reply)."""
        offset, writes, signatures = 0, [], []
        for instance in request.instances:
            signature = tuple(sorted((name, t.dtype, tuple(t.shape.dims)) for name, t in instance.items.items()))
            signatures.append(signature)
            for tensor in instance.items.values():
                if tensor.dtype not in TEXT_TYPES and len(tensor.data) >= self.threshold:
                    writes.append((offset, tensor))
                    offset = _aligned(offset + len(tensor.data))
            for name, (_, _, nbytes) in self._outputs.get(signature, {}).items():
                instance.output_buffers[name].CopyFrom(
                    pb.ShmTensorData(memory_key=self.key, data_offset=offset, data_size=nbytes)
                )
                offset = _aligned(offset + nbytes)
        self._reserve(offset)
        for at, tensor in writes:
            data = tensor.data
            os.pwrite(self._fd, data, at)
            tensor.shm_data.CopyFrom(
                pb.ShmTensorData(memory_key=self.key, bytes_size=self._size, data_offset=at, data_size=len(data))
            )
        for instance in request.instances:
            for buffer in instance.output_buffers.values():
                buffer.bytes_size = self._size
        return signatures

    def collect(self, reply: pb.PredictReply, signatures: list[tuple]) -> None:
        """Read outputs answered in the file back into the reply (as data), and learn the large outputs' sizes."""
        for instance, signature in zip(reply.instances, signatures):
            learned: dict[str, tuple] = {}
            for name, tensor in instance.items.items():
                if tensor.WhichOneof("tensor_data") == "shm_data":
                    shm = tensor.shm_data
                    if shm.memory_key != self.key or shm.data_offset + shm.data_size > self._size:
                        raise RuntimeError(f"output {name} names shared memory this client did not give")
                    tensor.data = os.pread(self._fd, shm.data_size, shm.data_offset)
                if tensor.dtype not in TEXT_TYPES and len(tensor.data) >= self.threshold:
                    learned[name] = (tensor.dtype, tuple(tensor.shape.dims), len(tensor.data))
            if learned:
                self._outputs[signature] = learned

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass

    def __del__(self) -> Any:
        self.close()
