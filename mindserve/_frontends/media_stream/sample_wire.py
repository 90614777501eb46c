"""Reading the common media-stream message in place: a MediaStreamMessage {sequence_number = 1,
media_sample = 6 {timestamp = 1, content_bytes = 5 {bytes = 1}}} whose frame is then a view of the message's
own bytes. protobuf would copy a frame twice (into its message, then into a Python bytes object), as much work
as the rest of the frame's way to the worker.

Only that exact shape is read here, each field at most once, every length checked against what is left; any
other message (a descriptor, a reference, inferences, unknown fields, a field twice) returns None and is
parsed strictly by protobuf, which also gives every error its text.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

_VARINT, _LEN = 0, 2
_MAX_VARINT_BYTES = 10


class EmbeddedSample(NamedTuple):
    sequence_number: int
    timestamp: int
    frame: memoryview


def _varint(data: memoryview, at: int, end: int) -> tuple[int, int]:
    """The varint at ``at`` and where it ends; ValueError when it runs past ``end`` or 10 bytes."""
    value, shift = 0, 0
    for i in range(at, min(end, at + _MAX_VARINT_BYTES)):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & 0xFFFF_FFFF_FFFF_FFFF, i + 1  # as protobuf reads a uint64
        shift += 7
    raise ValueError("bad varint")


Fields = dict[int, Union[int, tuple[int, int]]]


def _fields(data: memoryview, at: int, end: int) -> Optional[Fields]:
    """Each field of the message in ``data[at:end]``: field number -> int (varint) or (start, end) (length
    delimited); None for a field of another wire type or one that comes twice."""
    found: Fields = {}
    while at < end:
        key, at = _varint(data, at, end)
        number, wire = key >> 3, key & 7
        if number in found:
            return None
        if wire == _VARINT:
            found[number], at = _varint(data, at, end)
        elif wire == _LEN:
            length, at = _varint(data, at, end)
            if length > end - at:
                raise ValueError("field past the end")
            found[number] = (at, at + length)
            at += length
        else:
            return None
    return found


def _only(fields: Optional[Fields], varints: tuple, spans: tuple) -> Optional[Fields]:
    """``fields`` when it holds nothing but the given varint and length-delimited fields, of those kinds."""
    if fields is None or set(fields) - set(varints) - set(spans):
        return None
    if any(not isinstance(fields[n], int) for n in varints if n in fields) or any(
        not isinstance(fields[n], tuple) for n in spans if n in fields
    ):
        return None
    return fields


def _span(fields: Fields, number: int) -> tuple[int, int]:
    value = fields.get(number, (0, 0))
    return value if isinstance(value, tuple) else (0, 0)


def _int(fields: Fields, number: int) -> int:
    value = fields.get(number, 0)
    return value if isinstance(value, int) else 0


def read_embedded(data: bytes) -> Optional[EmbeddedSample]:
    """The sample of a common embedded-frame message (see the module text), or None."""
    view = memoryview(data)
    try:
        top = _only(_fields(view, 0, len(view)), (1,), (6,))
        if top is None or 6 not in top:
            return None
        sample = _only(_fields(view, *_span(top, 6)), (1,), (5,))
        if sample is None or 5 not in sample:
            return None
        content = _only(_fields(view, *_span(sample, 5)), (), (1,))
        if content is None:
            return None
    except ValueError:
        return None
    start, stop = _span(content, 1)
    return EmbeddedSample(_int(top, 1), _int(sample, 1), view[start:stop])
