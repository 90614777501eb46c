"""Framing of control messages between the master and a worker (the start handshake over their socket).

A frame is ``<u32 header length><u64 payload length><header JSON><payload>``. Tensors never travel here: they
go through the shared-memory channel (mindserve._transport.shm_channel, laid out by .blocks).
"""

from __future__ import annotations

import json
import struct
from typing import Any, Iterable

from mindserve._transport.blocks import byte_view

PREFIX = struct.Struct("<IQ")
MAX_HEADER_BYTES = 64 << 20


class FrameError(ValueError):
    """A frame whose prefix does not describe a frame."""


def encode_frame(header: dict, buffers: Iterable[Any] = ()) -> list:
    """The pieces of one frame, ready for ``writelines``/``sendmsg`` (buffers are not copied)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    bufs = [byte_view(b) for b in buffers]
    total = sum(len(b) for b in bufs)
    return [PREFIX.pack(len(head), total), head, *bufs]


def decode_header(prefix: bytes) -> tuple[int, int]:
    """Header and payload lengths of a frame from its fixed prefix."""
    head_len, payload_len = PREFIX.unpack(prefix)
    if head_len > MAX_HEADER_BYTES:
        raise FrameError(f"frame header of {head_len} bytes is too large")
    return head_len, payload_len
