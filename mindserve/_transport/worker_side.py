"""The worker's blocking end of its channel to the master."""

from __future__ import annotations

import json
import socket
from typing import Any, Optional, Sequence

from mindserve._transport import messages


class WorkerChannel:
    """Frames to and from the master over a connected stream socket, from plain threads."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._sock.setblocking(True)

    def _recv_exact(self, size: int) -> Optional[bytearray]:
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = self._sock.recv_into(view[got:])
            if n == 0:
                return None
            got += n
        return buf

    def recv(self) -> Optional[tuple[dict[str, Any], bytearray]]:
        """The next frame's header and payload (writable, so tensors read from it are writable arrays);
        None when the master has gone away."""
        prefix = self._recv_exact(messages.PREFIX.size)
        if prefix is None:
            return None
        head_len, payload_len = messages.decode_header(bytes(prefix))
        head = self._recv_exact(head_len)
        payload = self._recv_exact(payload_len)
        if head is None or payload is None:
            return None
        return json.loads(head), payload

    def send(self, header: dict, buffers: Sequence = ()) -> None:
        for piece in messages.encode_frame(header, buffers):
            self._sock.sendall(piece)

    def close(self) -> None:
        self._sock.close()
