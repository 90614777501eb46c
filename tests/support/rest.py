"""Helpers for the REST tests: plain HTTP requests (with http.client over TCP, or HTTPS over a unix socket; with
aiohttp's UnixConnector for plain HTTP over a unix socket) that return the status, headers and body as they came,
and a servable that describes what its stage received."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
from typing import Any, NamedTuple, Optional

import aiohttp


class Reply(NamedTuple):
    status: int
    headers: dict
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _UnixHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS over a unix socket (aiohttp's UnixConnector speaks plain HTTP only), verified as 'localhost'."""

    def __init__(self, path: str, context: ssl.SSLContext):
        super().__init__("localhost", timeout=60, context=context)
        self._path = path
        self._context = context

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = self._context.wrap_socket(sock, server_hostname="localhost")


def request(
    address: str,
    method: str,
    path: str,
    body: Any = None,
    headers: Optional[dict] = None,
    context: Optional[ssl.SSLContext] = None,
    chunked: bool = False,
) -> Reply:
    """One HTTP request to ``host:port`` (HTTPS with ``context``; ``unix:/path`` takes HTTPS only); a dict or list
    body is sent as JSON, bytes as they are."""
    if address.startswith("unix:"):
        assert context is not None, "a unix:/path address takes HTTPS only (give a context)"
        conn: http.client.HTTPConnection = _UnixHTTPSConnection(address[len("unix:") :], context)
    elif context is None:
        host, port = address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
    else:
        host, port = address.rsplit(":", 1)
        conn = http.client.HTTPSConnection(host, int(port), timeout=60, context=context)
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    try:
        if chunked:
            conn.request(method, path, body=iter([body]), headers=headers or {}, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


def unix_request(socket_path: str, method: str, path: str, body: Any = None) -> Reply:
    """One plain HTTP request over the unix socket ``socket_path``, through aiohttp's UnixConnector."""

    async def send() -> Reply:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path)) as session:
            kwargs: dict = {} if body is None else {"json": body}
            async with session.request(method, f"http://localhost{path}", **kwargs) as response:
                return Reply(response.status, dict(response.headers), await response.read())

    return asyncio.run(send())


# kinds.kind(x) answers what its Python stage received: "<dtype><shape>" for an array, else the type's name
KINDS_CONFIG = """
import numpy as np
from mindserve.server import register


def describe(x):
    if isinstance(x, np.ndarray):
        return "%s%s" % (x.dtype, list(x.shape))
    return type(x).__name__


@register.register_method(output_names=["kind"])
def kind(x):
    return register.add_stage(describe, x, outputs_count=1)
"""
