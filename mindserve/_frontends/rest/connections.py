"""The REST server's connections: bounded in number, closed when idle, and answered in JSON even when what came
is not HTTP at all.

aiohttp gives each connection a RequestHandler made by its ``web.Server``; here that factory is wrapped so that:
- past ``max_connections`` open connections, a new one is answered 503 (JSON) and closed at once: a client that
  opens connections without end (slowloris) cannot exhaust the master's file descriptors or memory;
- a request aiohttp cannot parse (a malformed request line, header or chunk) is answered with a JSON error that
  does not echo the bytes received, like every other error of this server, instead of aiohttp's plain text.
The idle bound itself is aiohttp's ``keepalive_timeout`` (see RestServer.start).
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any, NamedTuple, Optional

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from mindserve import _defaults
from mindserve._frontends.rest.common import dumps

DEFAULT_IDLE_TIMEOUT_S = _defaults.IDLE_TIMEOUT_S
DEFAULT_MAX_CONNECTIONS = _defaults.MAX_CONNECTIONS


class ConnectionLimits(NamedTuple):
    """``idle_timeout_s``: a connection that has not sent a whole request head this long after it opened (or
    after its last response) is closed. ``max_connections``: open connections past this are refused."""

    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS


def _json_bytes(status: int, message: str) -> bytes:
    body = dumps({"error": message})
    phrase = HTTPStatus(status).phrase
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\nServer: mindserve\r\n\r\n"
    ).encode() + body


class _Refused(asyncio.Protocol):
    """A connection past the cap: one 503 answer, then closed."""

    def __init__(self, limit: int):
        self._limit = limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_json_bytes(503, f"The server has {self._limit} connections open, its limit: retry later"))
        transport.close()


class _JsonErrors(RequestHandler):
    """aiohttp's RequestHandler, answering the requests it cannot parse in JSON (no new state: the same slots)."""

    __slots__ = ()

    def handle_error(
        self, request: Any, status: int = 500, exc: Optional[BaseException] = None, message: Optional[str] = None
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs as aiohttp does; raises if a reply was sent
        if status == 400:
            text = "The request is not valid HTTP/1.1: a malformed request line, header or chunk"
        elif status == 500:
            text = "Internal server error"
        else:
            text = f"The request could not be handled: {HTTPStatus(status).phrase}"
        response = web.Response(
            body=dumps({"error": text}), status=status, content_type="application/json", headers={"Server": "mindserve"}
        )
        response.force_close()
        return response


class _CappedFactory:
    """The protocol factory of a listening socket: aiohttp's Server, capped (see the module docstring)."""

    def __init__(self, server: web.Server, limit: int):
        self._server = server
        self._limit = limit

    def __call__(self) -> asyncio.Protocol:
        if len(self._server.connections) >= self._limit:
            return _Refused(self._limit)
        handler = self._server()
        handler.__class__ = _JsonErrors  # same layout: only handle_error differs
        return handler

    def __getattr__(self, name: str) -> Any:  # the runner's pre_shutdown, shutdown, connections, ...
        return getattr(self._server, name)


def capped_connections(runner: web.AppRunner, limit: int) -> None:
    """Install the capped factory on a runner that is set up but whose sites are not started yet (the sites take
    ``runner.server`` as their protocol factory when they start)."""
    assert runner.server is not None
    runner._server = _CappedFactory(runner.server, limit)  # type: ignore[assignment]
