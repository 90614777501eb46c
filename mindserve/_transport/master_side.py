"""The master's asyncio end of a worker channel."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any, Sequence

from mindserve._transport import messages


class MasterChannel:
    """Frames to and from one worker over a connected stream socket, on the master's event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> "MasterChannel":
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
        return cls(reader, writer)

    def send(self, header: dict, buffers: Sequence = ()) -> None:
        """Queue one frame for sending (never blocks; the transport buffers)."""
        self._writer.writelines(messages.encode_frame(header, buffers))

    async def drain(self) -> None:
        await self._writer.drain()

    async def recv(self) -> tuple[dict[str, Any], bytearray]:
        """The next frame's header and payload; raises ``asyncio.IncompleteReadError`` at end of stream."""
        head_len, payload_len = messages.decode_header(await self._reader.readexactly(messages.PREFIX.size))
        header = json.loads(await self._reader.readexactly(head_len))
        payload = bytearray(await self._reader.readexactly(payload_len)) if payload_len else bytearray()
        return header, payload

    def close(self) -> None:
        self._writer.close()
