"""Writing PredictReply bytes directly, without building protobuf objects per instance.

A reply of N instances through protobuf's Python API costs a few object allocations and setter calls per
instance and output; here each output of an instance is a cached prefix (field tags and lengths, which depend
only on the output's name, dtype, shape and byte count) followed by its bytes. The layout is the wire format of
ms_service.proto (field numbers noted inline); tests check it against protobuf's own parser.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, Union

from mindserve import _dtypes
from mindserve._errors import ServingError
from mindserve._frontends.grpc.wire_write import field as _field
from mindserve._frontends.grpc.wire_write import varint
from mindserve._native import ffi, lib
from mindserve._tensor import RawTensor, StackedOutput

_TEXT_TYPES = (_dtypes.MS_STRING, _dtypes.MS_BYTES)
_PREFIX_CACHE_LIMIT = 4096


class _StackedLayout(NamedTuple):
    """How each instance of a stacked reply is framed (C arrays for ms_interleave_rows)."""

    head: bytes
    record: int  # bytes per instance, head included
    kept: list  # the prefixes' C buffers, alive as long as the layout
    prefixes: Any
    prefix_sizes: Any
    row_sizes: Any


class ReplyEncoder:
    """Serializes PredictReply messages; keeps the prefixes it has made for reuse (bounded)."""

    def __init__(self) -> None:
        self._prefixes: dict[tuple, bytes] = {}
        self._layouts: dict[tuple, _StackedLayout] = {}

    def _item_prefix(self, name: str, raw: RawTensor, nbytes: int) -> bytes:
        """Everything of one ``items`` map entry of an Instance before the tensor's bytes."""
        shared = type(raw) is not RawTensor  # a SharedReply: its bytes are the tensor's shm_data
        key = (name, raw.dtype, raw.shape, nbytes, shared)
        prefix = self._prefixes.get(key)
        if prefix is not None:
            return prefix
        if shared:
            shape, data_tag = raw.shape, 0x2A  # Tensor.shm_data = 5
        elif raw.dtype in _TEXT_TYPES:
            shape, data_tag = (1,), 0x22  # Tensor.bytes_val = 4: str and bytes travel as one item of shape [1]
        else:
            shape, data_tag = raw.shape, 0x1A  # Tensor.data = 3
        dims = b"".join(varint(d) for d in shape)
        tensor_head = (
            _field(0x0A, _field(0x0A, dims) if dims else b"")  # Tensor.shape = 1 {dims = 1, packed}
            + (bytes((0x10,)) + varint(raw.dtype) if raw.dtype else b"")  # Tensor.dtype = 2
            + bytes((data_tag,))
            + varint(nbytes)
        )
        entry_head = _field(0x0A, name.encode()) + bytes((0x12,)) + varint(len(tensor_head) + nbytes)  # key, value
        prefix = bytes((0x0A,)) + varint(len(entry_head) + len(tensor_head) + nbytes) + entry_head + tensor_head
        if len(self._prefixes) >= _PREFIX_CACHE_LIMIT:
            self._prefixes.clear()
        self._prefixes[key] = prefix
        return prefix

    def _instance(self, outputs: dict[str, RawTensor], parts: list) -> None:
        """Append one Instance (PredictReply.instances = 3) to ``parts``."""
        pieces: list[Any] = []
        size = 0
        for name, raw in outputs.items():
            data = raw.data
            prefix = self._item_prefix(name, raw, len(data))
            pieces.append(prefix)
            pieces.append(data)
            size += len(prefix) + len(data)
        parts.append(b"\x1a" + varint(size))
        parts.extend(pieces)

    @staticmethod
    def _error(error: Optional[ServingError]) -> bytes:
        """One ErrorMsg (PredictReply.error_msg = 4): error_code = 1, error_msg = 2; empty for a success."""
        if error is None:
            return b"\x22\x00"
        body = (b"\x08" + varint(error.code & 0xFFFFFFFFFFFFFFFF) if error.code else b"") + (
            _field(0x12, error.message.encode()) if error.message else b""
        )
        return _field(0x22, body)

    def encode(self, spec: bytes, outcomes: Sequence[Union[dict, ServingError]]) -> bytes:
        """The reply to a request whose instances ended as ``outcomes`` (a dict of RawTensor outputs or a
        ServingError each), by MSService's rules: no error entry when all succeeded; one when every instance
        failed with the same error; else one per instance, and an empty instance for each failure."""
        stacked = getattr(outcomes, "stacked", None)  # (a plain list of outcomes has none)
        if stacked is not None:
            return self._encode_stacked(spec, len(outcomes), stacked)
        errors = [o for o in outcomes if isinstance(o, ServingError)]
        if errors and len(errors) == len(outcomes) and len({(e.code, e.message) for e in errors}) == 1:
            return self.whole_request_error(spec, errors[0])
        parts: list = [_field(0x0A, spec)] if spec else []  # PredictReply.servable_spec = 1
        for outcome in outcomes:
            if isinstance(outcome, ServingError):
                parts.append(b"\x1a\x00")
            else:
                self._instance(outcome, parts)
        if errors:
            encoded: dict[int, bytes] = {}  # instances of a run share one error object: encoded once
            success = self._error(None)
            for outcome in outcomes:
                if isinstance(outcome, ServingError):
                    entry = encoded.get(id(outcome))
                    if entry is None:
                        entry = encoded[id(outcome)] = self._error(outcome)
                    parts.append(entry)
                else:
                    parts.append(success)
        return b"".join(parts)

    def _encode_stacked(self, spec: bytes, count: int, outputs: dict[str, StackedOutput]) -> bytes:
        """Every instance succeeded with stacked outputs: each instance is the same prefixes around its rows,
        interleaved by the C core in one pass."""
        key = tuple(
            (name, out.dtype, out.row_shape, len(out.data) // count if count else 0) for name, out in outputs.items()
        )
        layout = self._layouts.get(key)
        if layout is None:
            if len(self._layouts) >= _PREFIX_CACHE_LIMIT:
                self._layouts.clear()
            layout = self._layouts[key] = self._stacked_layout(key)
        if any(len(out.data) != count * row for out, (_, _, _, row) in zip(outputs.values(), key)):
            raise ValueError("stacked outputs do not hold a row per instance")  # a defect: the reader sized them
        head_field = _field(0x0A, spec) if spec else b""
        out = bytearray(len(head_field) + count * layout.record)
        out[: len(head_field)] = head_field
        columns = ffi.new("void *[]", [ffi.from_buffer(o.data) for o in outputs.values()])
        column_sizes = ffi.new("size_t[]", [len(o.data) for o in outputs.values()])
        written = lib.ms_interleave_rows(
            ffi.from_buffer(out, require_writable=True) + len(head_field),
            len(out) - len(head_field),
            layout.head,
            len(layout.head),
            count,
            len(key),
            layout.prefixes,
            layout.prefix_sizes,
            columns,
            layout.row_sizes,
            column_sizes,
        )
        if written != len(out) - len(head_field):
            raise ValueError("reply layout does not fit its buffer")  # a defect: the buffer was sized from it
        return bytes(out)

    def _stacked_layout(self, key: tuple) -> "_StackedLayout":
        """The framing of one instance of a stacked reply: its head, then a prefix and a row per output."""
        prefixes = [
            self._item_prefix(name, RawTensor(dtype, row_shape, b""), row) for name, dtype, row_shape, row in key
        ]
        rows = [row for _, _, _, row in key]
        size = sum(len(p) for p in prefixes) + sum(rows)
        head = b"\x1a" + varint(size)  # PredictReply.instances = 3, all of one size
        kept = [ffi.new("char[]", p) for p in prefixes]  # the C arrays must outlive the layout's pointers
        return _StackedLayout(
            head,
            len(head) + size,
            kept,
            ffi.new("void *[]", kept),
            ffi.new("size_t[]", [len(p) for p in prefixes]),
            ffi.new("size_t[]", rows),
        )

    def whole_request_error(self, spec: bytes, error: ServingError) -> bytes:
        return (_field(0x0A, spec) if spec else b"") + self._error(error)
