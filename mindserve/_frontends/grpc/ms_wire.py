"""The fast path for the common Predict request, read straight from its wire bytes by the C core.

Most requests are "common" (see native/predict_wire.h): every instance carries exactly the method's inputs,
each numeric and shaped alike in every instance. For those, protobuf's message objects (a dict and a tensor
object per instance and input) are the largest cost of a request in the master. Here C reads the request in
one pass and reports, per input, the dtype, shape and where each instance's row lies in the request, which
becomes a :class:`StackedInputs` the transport copies into shared memory with no further Python per instance.

Whatever is not common (errors included) returns None, and the caller parses the request with protobuf, which
then gives the precise error: both paths answer every request the same way.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from mindserve import _dtypes
from mindserve._native import ffi, lib
from mindserve._tensor import StackedInput, StackedInputs

# the item size of each numeric DataType, 0 for the others (unknown, string, bytes)
_ITEM_SIZES = ffi.new(
    "uint8_t[]", [_dtypes.NUMPY_OF[c].itemsize if c in _dtypes.NUMPY_OF else 0 for c in range(lib.MS_WIRE_DTYPES)]
)
_NAMES_CACHE_LIMIT = 256


class RequestHead(NamedTuple):
    """The servable spec of a request (``spec`` is its serialized form, as the reply echoes it) and its
    number of instances."""

    spec: bytes
    name: str
    method: str
    version: int
    instances: int


def count_instances(data: bytes) -> Optional[tuple[int, bytes]]:
    """The number of instances of a serialized PredictRequest and its servable spec's bytes (empty when it has
    none), read without parsing anything inside; None when its top level is not wire data."""
    head = ffi.new("ms_predict_head *")
    if lib.ms_predict_count_instances(ffi.from_buffer(data), len(data), head) != lib.MS_OK:
        return None
    return head.instances, data[head.spec_offset : head.spec_offset + head.spec_size]


def read_head(data: bytes, head=None) -> Optional[RequestHead]:
    """The head of a serialized PredictRequest, or None when the request's top level is not common. ``head``
    is an ``ms_predict_head *`` to parse into (a new one when None)."""
    if head is None:
        head = ffi.new("ms_predict_head *")
    if lib.ms_predict_head_parse(ffi.from_buffer(data), len(data), head) != lib.MS_OK:
        return None
    try:
        name = data[head.name_offset : head.name_offset + head.name_size].decode()
        method = data[head.method_offset : head.method_offset + head.method_size].decode()
    except UnicodeDecodeError:  # protobuf refuses such strings: let it say so
        return None
    spec = data[head.spec_offset : head.spec_offset + head.spec_size]
    return RequestHead(spec, name, method, head.version, head.instances)


class _Names(NamedTuple):
    """Input names as the C reader takes them (the encoded names must stay alive with the array)."""

    encoded: list
    pointers: object
    sizes: object


class CommonReader:
    """Reads common requests against a method's input names (encoded once per name list)."""

    def __init__(self) -> None:
        self._names: dict[tuple, _Names] = {}
        # what the C reader fills in, made once: a reader serves one thread (its event loop) at a time
        self._head = ffi.new("ms_predict_head *")
        self._specs = ffi.new("ms_wire_input[]", lib.MS_WIRE_MAX_INPUTS)

    def read_head(self, data: bytes) -> Optional[RequestHead]:
        """:func:`read_head` into this reader's own struct."""
        return read_head(data, self._head)

    def _encoded(self, names: tuple) -> _Names:
        cached = self._names.get(names)
        if cached is None:
            if len(self._names) >= _NAMES_CACHE_LIMIT:
                self._names.clear()
            encoded = [ffi.new("char[]", n.encode()) for n in names]
            cached = _Names(
                encoded, ffi.new("char *[]", encoded), ffi.new("size_t[]", [len(n.encode()) for n in names])
            )
            self._names[names] = cached
        return cached

    def read(self, data: bytes, head: RequestHead, input_names: tuple) -> Optional[StackedInputs]:
        """The instances of a common request for a method with inputs ``input_names``; None when the request
        is not common."""
        count = head.instances
        n = len(input_names)
        if not count or not 0 < n <= lib.MS_WIRE_MAX_INPUTS:
            return None
        names = self._encoded(input_names)
        specs = self._specs
        offsets = np.empty((n, count), np.uint64)
        status = lib.ms_predict_common_parse(
            ffi.from_buffer(data),
            len(data),
            names.pointers,
            names.sizes,
            n,
            _ITEM_SIZES,
            specs,
            ffi.from_buffer("uint64_t[]", offsets),
            count,
        )
        if status != lib.MS_OK:
            return None
        inputs = {}
        for k, name in enumerate(input_names):
            spec = specs[k]
            inputs[name] = StackedInput(
                spec.dtype, tuple(ffi.unpack(spec.dims, spec.ndims)), spec.row_size, data, offsets[k]
            )
        return StackedInputs(count, inputs)
