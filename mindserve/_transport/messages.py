"""Framing and tensor packing for master <-> worker messages.

A frame is ``<u32 header length><u64 payload length><header JSON><payload>``. Tensor values in a header are
descriptors ``[dtype code, shape, nbytes]`` whose bytes follow one another in the payload, in header order.
Every descriptor is checked against the payload before use, so a corrupt frame gives an error, not a bad read.
"""
from __future__ import annotations

import json
import math
import struct
from typing import Any, Iterable, Union

import numpy as np

from mindserve import _dtypes
from mindserve._tensor import RawTensor

PREFIX = struct.Struct("<IQ")
MAX_HEADER_BYTES = 64 << 20

Value = Union[np.ndarray, str, bytes]


class FrameError(Exception):
    """A frame or a tensor descriptor that does not describe its payload."""


def _byte_view(buffer: Any) -> Union[memoryview, bytes]:
    view = memoryview(buffer)
    return view.cast("B") if view.nbytes else b""  # cast() refuses views with a zero in their shape


def encode_frame(header: dict, buffers: Iterable[Any] = ()) -> list:
    """The pieces of one frame, ready for ``writelines``/``sendmsg`` (buffers are not copied)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    bufs = [b if isinstance(b, bytes) else _byte_view(b) for b in buffers]
    total = sum(len(b) for b in bufs)
    return [PREFIX.pack(len(head), total), head, *bufs]


def decode_header(prefix: bytes) -> tuple[int, int]:
    """Header and payload lengths of a frame from its fixed prefix."""
    head_len, payload_len = PREFIX.unpack(prefix)
    if head_len > MAX_HEADER_BYTES:
        raise FrameError(f"frame header of {head_len} bytes is too large")
    return head_len, payload_len


def pack_value(value: Value, buffers: list) -> list:
    """Descriptor for one tensor value; appends its bytes to ``buffers``."""
    if isinstance(value, str):
        data = value.encode()
        buffers.append(data)
        return [_dtypes.MS_STRING, [], len(data)]
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        buffers.append(data)
        return [_dtypes.MS_BYTES, [], len(data)]
    array = np.asarray(value)
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)  # (only here: it would turn a 0-d array into a 1-d one)
    code = _dtypes.code_of_array(array)
    if code is None:
        raise TypeError(f"unsupported tensor data type {array.dtype}")
    buffers.append(array)
    return [code, list(array.shape), array.nbytes]


def pack_values(values: dict[str, Value], buffers: list) -> dict[str, list]:
    """Descriptors for a dict of named values; appends their bytes to ``buffers`` in the same order."""
    return {name: pack_value(v, buffers) for name, v in values.items()}


class PayloadReader:
    """Reads the values described by a header, in order, out of one frame's payload (numpy views, no copy)."""

    def __init__(self, payload: Union[bytes, bytearray, memoryview]):
        self._payload = memoryview(payload)
        self._offset = 0

    def take_raw(self, desc: Any) -> RawTensor:
        """The next tensor as dtype code, shape and a view of its bytes, after checking the descriptor."""
        if not (isinstance(desc, list) and len(desc) == 3):
            raise FrameError(f"bad tensor descriptor {desc!r}")
        code, shape, nbytes = desc
        if not (isinstance(nbytes, int) and 0 <= nbytes <= len(self._payload) - self._offset):
            raise FrameError("tensor descriptor reaches past the payload")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise FrameError(f"bad tensor descriptor {desc!r}")
        dtype = _dtypes.NUMPY_OF.get(code)
        if dtype is None and code not in (_dtypes.MS_STRING, _dtypes.MS_BYTES):
            raise FrameError(f"bad tensor descriptor {desc!r}")
        if dtype is not None and math.prod(shape) * dtype.itemsize != nbytes:
            raise FrameError(f"tensor descriptor {desc!r} does not match its byte size")
        start = self._offset
        self._offset += nbytes
        return RawTensor(code, tuple(shape), self._payload[start:self._offset])

    def take(self, desc: Any) -> Value:
        """The next tensor as a numpy array viewing the payload, or a str / bytes."""
        code, shape, data = self.take_raw(desc)
        if code == _dtypes.MS_STRING:
            return bytes(data).decode()
        if code == _dtypes.MS_BYTES:
            return bytes(data)
        return np.frombuffer(data, dtype=_dtypes.NUMPY_OF[code]).reshape(shape)

    def take_values(self, descs: dict[str, Any]) -> dict[str, Value]:
        return {name: self.take(d) for name, d in descs.items()}

    def take_raws(self, descs: dict[str, Any]) -> dict[str, RawTensor]:
        return {name: self.take_raw(d) for name, d in descs.items()}


def pack_raws(tensors: dict[str, RawTensor], buffers: list) -> dict[str, list]:
    """Descriptors for already-validated raw tensors; appends their bytes to ``buffers``."""
    descs = {}
    for name, t in tensors.items():
        buffers.append(t.data)
        descs[name] = [t.dtype, list(t.shape), len(t.data)]
    return descs
