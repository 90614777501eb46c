"""Writing protobuf wire data directly: the small pieces the reply writers (``ms_reply``, ``oip_wire``) are made
of, for replies whose bulk is tensor bytes that protobuf's Python API would copy twice."""

from __future__ import annotations


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: its tag byte (field number << 3 | 2, below 16), length, payload."""
    return bytes((tag,)) + varint(len(payload)) + payload


def text_field(tag: int, text: str) -> bytes:
    """A string field, left out when empty (proto3 writes no default values)."""
    return field(tag, text.encode()) if text else b""
