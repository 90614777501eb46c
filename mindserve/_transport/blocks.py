"""Message blocks: how a job or a reply is laid out in a channel arena.

A block is ``<u32 header length><u32 0><header JSON>``, padding to 64 bytes, then the tensor data, each
column 64-byte aligned. The header describes each named tensor column of the message's ``n`` instances:

- ``["s", dtype, row_shape, offset]``: stacked, the instances' values back to back as one C-ordered array of
  shape ``[n, *row_shape]``: what a batching model takes, written and read with one copy;
- ``["e", [[dtype, shape, offset, nbytes], ...]]``: one value per instance (strings, bytes, or instances whose
  shapes differ).

Offsets are relative to the start of the data. A reader checks every descriptor against the block before it
touches any byte, so a corrupt header gives :class:`BlockError`, never a read outside the block. Only plain
JSON and raw bytes cross: nothing is unpickled.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence, Union

import numpy as np

from mindserve import _dtypes
from mindserve._dispatch.limits import MAX_TENSOR_DIMS
from mindserve._native import ffi, lib
from mindserve._tensor import RawTensor, StackedInputs

PREFIX = struct.Struct("<II")
# one encoder for every header: json.dumps with separators builds a new encoder per call, a cost on every job
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
ALIGN = 64
# Headers of stacked messages (one descriptor per column) are short and repeat message after message, so their
# readers cache what they parse from them; longer headers (a descriptor or an error per instance) are not kept.
CACHED_HEADER_LIMIT = 4096
TEXT_CODES = _dtypes.TEXT_CODES


class BlockError(Exception):
    """A block whose header does not describe its bytes."""


def align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def byte_view(buffer: Any) -> Union[memoryview, bytes]:
    """The bytes of a contiguous buffer as a flat byte view (no copy)."""
    if isinstance(buffer, bytes):
        return buffer
    view = memoryview(buffer)
    return view.cast("B") if view.nbytes else b""  # cast() refuses views with a zero in their shape


class BlockWriter:
    """Collects a message's tensors, then writes header and data into an arena block in one pass."""

    def __init__(self) -> None:
        self.data_size = 0
        self._copies: list[tuple[int, Any]] = []
        self._gathers: list[tuple[int, Union[bytes, memoryview], np.ndarray, int]] = []

    def _place(self, nbytes: int) -> int:
        offset = align(self.data_size)
        self.data_size = offset + nbytes
        return offset

    def add(self, data: Any) -> int:
        """Place one buffer; its offset in the data."""
        data = byte_view(data)
        offset = self._place(len(data))
        self._copies.append((offset, data))
        return offset

    def add_rows(self, pieces: Sequence[Any]) -> int:
        """Place buffers back to back, as the rows of one stacked column; the column's offset."""
        pieces = [byte_view(p) for p in pieces]
        offset = self._place(sum(len(p) for p in pieces))
        at = offset
        for piece in pieces:
            self._copies.append((at, piece))
            at += len(piece)
        return offset

    def add_gathered(self, source: Union[bytes, memoryview], offsets: np.ndarray, row_size: int) -> int:
        """Place rows of ``row_size`` bytes read at ``offsets`` (uint64) of ``source`` back to back, as one
        stacked column (copied by the C core at write time); the column's offset."""
        offset = self._place(len(offsets) * row_size)
        self._gathers.append((offset, source, offsets, row_size))
        return offset

    def encode(self, header: dict) -> tuple[bytes, int]:
        """The header bytes and the total block size."""
        head = _COMPACT_JSON.encode(header).encode()
        return head, align(PREFIX.size + len(head)) + self.data_size

    def write(self, view: memoryview, offset: int, head: bytes) -> None:
        """Write the block at ``offset`` of ``view`` (a block of the size ``encode`` returned)."""
        end = offset + PREFIX.size + len(head)
        view[offset:end] = PREFIX.pack(len(head), 0) + head
        data = offset + align(PREFIX.size + len(head))
        for at, piece in self._copies:
            if len(piece):
                view[data + at : data + at + len(piece)] = piece
        for at, source, offsets, row_size in self._gathers:
            size = len(offsets) * row_size
            if (
                lib.ms_gather_at(
                    ffi.from_buffer(view[data + at : data + at + size]),
                    size,
                    ffi.from_buffer(source),
                    len(source),
                    ffi.from_buffer("uint64_t[]", offsets),
                    len(offsets),
                    row_size,
                )
                != 0
            ):
                raise ValueError("gathered rows reach past their source")  # a defect: the reader checked them


class BlockReader:
    """The header of a block and checked access to its tensor columns."""

    def __init__(self, buffer: memoryview, offset: int, size: int):
        if size < PREFIX.size:
            raise BlockError("message block too short")
        head_len, _ = PREFIX.unpack(buffer[offset : offset + PREFIX.size])
        if head_len > size - PREFIX.size:
            raise BlockError("message header reaches past its block")
        try:
            self.header = json.loads(bytes(buffer[offset + PREFIX.size : offset + PREFIX.size + head_len]))
        except (ValueError, RecursionError) as exc:  # RecursionError: arrays or objects nested too deep
            raise BlockError(f"message header is not JSON: {exc}") from None
        if not isinstance(self.header, dict):
            raise BlockError("message header is not an object")
        start = align(PREFIX.size + head_len)
        if start > size:
            raise BlockError("message data starts past its block")
        self.buffer = buffer
        self._data = offset + start
        self._data_size = size - start

    def _span(self, offset: Any, nbytes: int) -> int:
        """The absolute position of [offset, offset + nbytes) of the data, after checking it lies inside."""
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= self._data_size - nbytes:
            raise BlockError("tensor reaches past its message block")
        return self._data + offset

    def column(self, desc: Any, count: int) -> Union[tuple[int, tuple, int], list[tuple[int, tuple, int, int]]]:
        """A checked column descriptor: ``(dtype, row_shape, position)`` for a stacked one of ``count`` rows, or a
        list of ``(dtype, shape, position, nbytes)``, one per instance."""
        if isinstance(desc, list) and len(desc) == 4 and desc[0] == "s":
            code, shape = desc[1], _shape(desc[2])
            dtype = numeric_dtype(code)
            if dtype is None:
                raise BlockError(f"bad stacked column {desc!r}")
            return code, shape, self._span(desc[3], count * math.prod(shape) * dtype.itemsize)
        if (
            isinstance(desc, list)
            and len(desc) == 2
            and desc[0] == "e"
            and isinstance(desc[1], list)
            and len(desc[1]) == count
        ):
            return [self._value_desc(d) for d in desc[1]]
        raise BlockError(f"bad column descriptor {str(desc)[:200]}")

    def _value_desc(self, desc: Any) -> tuple[int, tuple, int, int]:
        if not (isinstance(desc, list) and len(desc) == 4):
            raise BlockError(f"bad tensor descriptor {str(desc)[:200]}")
        code, shape, offset, nbytes = desc[0], _shape(desc[1]), desc[2], desc[3]
        if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
            raise BlockError(f"bad tensor descriptor {desc!r}")
        dtype = numeric_dtype(code)
        if dtype is None and not (is_int(code) and code in TEXT_CODES):
            raise BlockError(f"bad tensor descriptor {desc!r}")
        if dtype is not None and math.prod(shape) * dtype.itemsize != nbytes:
            raise BlockError(f"tensor descriptor {desc!r} does not match its byte size")
        return code, shape, self._span(offset, nbytes), nbytes

    def array(self, code: int, shape: tuple, position: int) -> np.ndarray:
        """A numpy array over the block's bytes (no copy), after ``column`` checked the span."""
        dtype = _dtypes.NUMPY_OF[code]
        return np.frombuffer(self.buffer, dtype, math.prod(shape), position).reshape(shape)

    def value(self, code: int, shape: tuple, position: int, nbytes: int) -> Union[np.ndarray, str, bytes]:
        if code == _dtypes.MS_STRING:
            try:
                return bytes(self.buffer[position : position + nbytes]).decode()
            except UnicodeDecodeError:
                raise BlockError("string tensor is not UTF-8") from None
        if code == _dtypes.MS_BYTES:
            return bytes(self.buffer[position : position + nbytes])
        return self.array(code, shape, position)

    def raw(self, code: int, shape: tuple, position: int, nbytes: int) -> RawTensor:
        return RawTensor(code, shape, self.buffer[position : position + nbytes])


def is_int(value: Any) -> bool:
    """Whether a header value is a JSON integer (not a boolean, which Python counts as an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def numeric_dtype(code: Any) -> Optional[np.dtype]:
    """The numpy dtype of a numeric dtype code read from a header; None for a text code or anything else
    (a list, a boolean or a float such as 11.0 must not pass for a code)."""
    return _dtypes.NUMPY_OF.get(code) if is_int(code) else None


def _shape(shape: Any) -> tuple:
    # the frontends refuse more dims than MAX_TENSOR_DIMS; a reader checks again, since numpy refuses arrays of
    # too many dims with an error of its own
    if not isinstance(shape, list) or len(shape) > MAX_TENSOR_DIMS or not all(is_int(d) and d >= 0 for d in shape):
        raise BlockError(f"bad tensor shape {str(shape)[:200]}")
    return tuple(shape)


class StackedColumn(NamedTuple):
    """A stacked column checked against its block: numpy dtype and dtype code, row shape, and its bytes as a
    span from the start of the block (not of the data)."""

    dtype: np.dtype
    code: int
    row_shape: tuple
    start: int
    nbytes: int


# The second word of a job block's prefix (0 in every other block): what the worker must know of a job before it
# reads it. Bits 0..30: how many milliseconds after its push the job may still start (0: no deadline); bit 31: the
# master cancelled it (its client went away). The master writes it while the job is its own (queued, not yet
# answered), the worker reads it once, when it pops the job: work whose client is gone is never started.
JOB_CANCELLED = 1 << 31
JOB_BUDGET_MS = JOB_CANCELLED - 1
_WORD = struct.Struct("<I")


def job_word(buffer: Any, offset: int) -> int:
    """The job word of the block at ``offset`` (see JOB_CANCELLED)."""
    return int(_WORD.unpack_from(buffer, offset + 4)[0])


def set_job_word(buffer: Any, offset: int, word: int) -> None:
    _WORD.pack_into(buffer, offset + 4, word)


def block_header(buffer: Any, offset: int, size: int) -> Optional[tuple[bytes, int]]:
    """The header bytes of the block at ``offset`` (``size`` bytes) and where its data starts, relative to the
    block; None when the header does not fit the block."""
    if size < PREFIX.size:
        return None
    head_len, _ = PREFIX.unpack_from(buffer, offset)
    start = align(PREFIX.size + head_len)
    if start > size:
        return None
    return bytes(buffer[offset + PREFIX.size : offset + PREFIX.size + head_len]), start


def header_object(header: bytes) -> Optional[dict]:
    """A header's JSON object, or None when the bytes are not one."""
    try:
        parsed = json.loads(header)
    except (ValueError, RecursionError):  # RecursionError: arrays or objects nested too deep
        return None
    return parsed if isinstance(parsed, dict) else None


_MISSING = object()


class HeaderKinds:
    """What ``parse(header, data_start)`` makes of each header, kept for the headers short enough to repeat
    (bounded: cleared when full). Messages of one kind carry the same header bytes, so a reader parses and
    checks each kind once; what ``parse`` returns must not depend on the block beyond its data start."""

    def __init__(self, parse: Callable[[bytes, int], Any], limit: int = 1024):
        self._parse = parse
        self._limit = limit
        self._kinds: dict[bytes, Any] = {}

    def get(self, header: bytes, data_start: int) -> Any:
        kind = self._kinds.get(header, _MISSING)
        if kind is _MISSING:
            kind = self._parse(header, data_start)
            if len(header) <= CACHED_HEADER_LIMIT:  # longer ones (a value or an error per instance) rarely repeat
                if len(self._kinds) >= self._limit:
                    self._kinds.clear()
                self._kinds[header] = kind
        return kind


def stacked_columns(columns: Any, count: int, data_start: int) -> Optional[tuple[dict[str, StackedColumn], int]]:
    """Column descriptors (a header's ``{name: desc}``) that are all stacked, with ``count`` rows each, checked
    as :meth:`BlockReader.column` checks them, and the block size they need; None for anything else."""
    if not isinstance(columns, dict) or not is_int(count) or count < 0:
        return None
    spans = {}
    needed = data_start
    for name, desc in columns.items():
        if not (isinstance(desc, list) and len(desc) == 4 and desc[0] == "s"):
            return None
        code, shape, offset = desc[1], desc[2], desc[3]
        dtype = numeric_dtype(code)
        if (
            dtype is None
            or not isinstance(shape, list)
            or len(shape) > MAX_TENSOR_DIMS
            or not all(is_int(d) and d >= 0 for d in shape)
            or not is_int(offset)
            or offset < 0
        ):
            return None
        nbytes = count * math.prod(shape) * dtype.itemsize
        spans[name] = StackedColumn(dtype, code, tuple(shape), data_start + offset, nbytes)
        needed = max(needed, data_start + offset + nbytes)
    return spans, needed


def raw_column(writer: BlockWriter, tensors: Sequence[RawTensor]) -> list:
    """The descriptor of a column of raw tensors (the master's side), placing their bytes in ``writer``:
    stacked when every instance has the same numeric dtype and shape."""
    first = tensors[0]
    if first.dtype not in TEXT_CODES and all(t.dtype == first.dtype and t.shape == first.shape for t in tensors):
        return ["s", first.dtype, list(first.shape), writer.add_rows([t.data for t in tensors])]
    return ["e", [[t.dtype, list(t.shape), writer.add(t.data), len(t.data)] for t in tensors]]


def stacked_inputs_columns(writer: BlockWriter, instances: StackedInputs) -> dict[str, list]:
    """The stacked column descriptors of a request read in place (the master's side), placing its rows."""
    return {
        name: ["s", col.dtype, list(col.row_shape), writer.add_gathered(col.source, col.offsets, col.row_size)]
        for name, col in instances.inputs.items()
    }


def raw_rows(reader: BlockReader, desc: Any, count: int) -> list[RawTensor]:
    """A column read back as one RawTensor per instance (views of the reader's buffer)."""
    column = reader.column(desc, count)
    if isinstance(column, list):
        return [reader.raw(*d) for d in column]
    code, shape, position = column
    row = math.prod(shape) * _dtypes.NUMPY_OF[code].itemsize
    buffer = reader.buffer
    return [RawTensor(code, shape, buffer[position + i * row : position + (i + 1) * row]) for i in range(count)]


def value_descriptor(writer: BlockWriter, value: Union[np.ndarray, str, bytes]) -> list:
    """The per-instance descriptor of one value (the worker's side), placing its bytes in ``writer``."""
    if isinstance(value, str):
        data = value.encode()
        return [_dtypes.MS_STRING, [], writer.add(data), len(data)]
    if isinstance(value, bytes):
        return [_dtypes.MS_BYTES, [], writer.add(value), len(value)]
    return [_dtypes.code_of_array(value), list(value.shape), writer.add(value), value.nbytes]


def stacked_descriptor(
    writer: BlockWriter, pieces: Iterable[np.ndarray], row_shape: tuple, code: Optional[int]
) -> list:
    """The descriptor of a stacked column made of row blocks ``pieces`` (C-contiguous arrays of one dtype)."""
    return ["s", code, list(row_shape), writer.add_rows(list(pieces))]
