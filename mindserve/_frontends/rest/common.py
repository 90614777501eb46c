"""What every REST route needs: the request body within the size limit, JSON answers, errors and their status
codes.

Status codes: 404 no such model, version or endpoint; 400 a malformed request or bad inputs; 413 a body over
``max_msg_mb_size``; 415 a body that is not JSON (or binary tensor data); 503 no live worker; 429 the bounded
request queue is full; 500 a failing stage or model, or a defect of the server.

A full queue is 429 (Too Many Requests), not 503: the server and its workers are healthy and the client should
retry later, while 503 is kept for "no live worker", which readiness reports too; load balancers take a 503 as
an unhealthy backend, a 429 only as back-pressure.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from typing import Any, Awaitable, Callable, Optional, Union

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from mindserve._errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FeatureDisabled,
    Internal,
    InvalidInput,
    KeyRequired,
    NoLiveWorker,
    NotServed,
    PermissionDenied,
    QueueFull,
    ServingError,
    StageFailed,
    Unauthenticated,
    WorkerLost,
    kind_of,
)
from mindserve._metrics import requests as request_metrics

HTTP_STATUS: dict[type, int] = {
    InvalidInput: 400,
    NotServed: 404,
    NoLiveWorker: 503,
    QueueFull: 429,
    StageFailed: 500,
    WorkerLost: 503,
    Internal: 500,
    Unauthenticated: 401,
    PermissionDenied: 403,
    KeyRequired: 403,
    AlreadyExists: 400,
    FeatureDisabled: 400,
    DeadlineExceeded: 504,
    Cancelled: 499,  # (nginx's "client closed request": there is no client left to read it)
}

log = logging.getLogger("mindserve")

BODY_IDLE_TIMEOUT_S = 30.0  # a body that stops arriving for this long is answered 408, so nothing waits forever

# Content types a JSON body may come with: JSON, text, and the form type that `curl -d` sends by default (as
# MindSpore Serving's own examples do); no content type at all is taken as JSON too.
JSON_CONTENT_TYPES = frozenset({"application/json", "text/plain", "application/x-www-form-urlencoded"})
BINARY_CONTENT_TYPE = "application/octet-stream"


class HttpError(Exception):
    """A request answered with ``status`` and the error text ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def status_of(error: ServingError) -> int:
    """The HTTP status that answers a ServingError (see the module's table)."""
    return HTTP_STATUS[kind_of(error)]


Handler = Callable[..., Awaitable[web.StreamResponse]]


def answers_errors(route: str, key: str = "error") -> Callable[[Handler], Handler]:
    """Every failure of a route answered as ``{key: text}`` with its status, never a traceback (see
    ``failure_response``; ``error_msg`` is MindSpore Serving's key, ``error`` KServe's)."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def handle(*args: Any) -> web.StreamResponse:
            try:
                return await handler(*args)
            except Exception as exc:
                return failure_response(route, exc, key)

        return handle

    return wrap


def failure_response(route: str, exc: Exception, key: str = "error") -> web.Response:
    """The answer to a request of ``route`` that failed with ``exc``: an HttpError with its status, a
    ServingError with its kind's, anything else a defect of ours, logged and answered 500 plainly. The one place
    where REST turns failures into answers, so where it notes them for the metrics."""
    if isinstance(exc, HttpError):
        cause: Union[Exception, str] = request_metrics.INVALID_INPUT if exc.status < 500 else "internal"
        status, message = exc.status, exc.message
    elif isinstance(exc, ServingError):
        cause, status, message = exc, status_of(exc), exc.message
    else:
        log.exception("%s failed", route)
        cause, status, message = exc, 500, f"{route} failed: {exc}"
    request_metrics.note_failure(cause)
    return error_response(status, message, key)


def dumps(document: Any) -> bytes:
    """Compact JSON. Non-finite floats are written as NaN / Infinity (as Python's json and most JSON libraries
    read them), since tensors may hold them."""
    try:
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate (from bytes that were not UTF-8): JSON's \u escapes carry it
        return json.dumps(document, separators=(",", ":")).encode()


def json_response(document: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(document), status=status, content_type="application/json")


def error_response(status: int, message: str, key: str = "error") -> web.Response:
    """``{"error": text}`` (KServe v2), or ``{"error_msg": text}`` for MindSpore Serving's form."""
    return json_response({key: message}, status)


def check_content_type(request: web.Request, binary: bool = False) -> None:
    """415 unless the body is JSON (or, with ``binary``, the binary tensor data extension)."""
    if "Content-Type" not in request.headers:  # aiohttp reports a missing type as application/octet-stream
        return
    kind = request.content_type
    if kind in JSON_CONTENT_TYPES or (binary and kind == BINARY_CONTENT_TYPE):
        return
    expected = "application/json" + (f" or {BINARY_CONTENT_TYPE}" if binary else "")
    raise HttpError(415, f"Content-Type {kind} is not supported: send the request as {expected}")


async def _next_chunk(request: web.Request) -> bytes:
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(BODY_IDLE_TIMEOUT_S):
            return await request.content.readany()
    return await asyncio.wait_for(request.content.readany(), BODY_IDLE_TIMEOUT_S)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body (decompressed when the client sent Content-Encoding gzip or deflate); 413 once it passes
    ``limit`` bytes, told by Content-Length before anything is read when the client declares it."""
    too_large = HttpError(
        413, f"Request body is larger than the limit of {limit} bytes (max_msg_mb_size {limit >> 20})"
    )
    length: Optional[int] = request.content_length
    if length is not None and length > limit:
        raise too_large
    chunks: list = []
    size = 0
    while True:
        try:
            chunk = await _next_chunk(request)
        except asyncio.TimeoutError:
            raise HttpError(408, f"Request body stopped arriving: nothing came for {BODY_IDLE_TIMEOUT_S:g} s") from None
        except (HttpProcessingError, RequestPayloadError) as exc:  # a broken chunked or compressed body, say
            detail = " ".join(str(exc).split())
            raise HttpError(400, f"Request body could not be read: {detail}") from None
        except ConnectionError:  # the client went away: nobody reads the answer, and nothing is logged
            raise HttpError(400, "Request body could not be read: the connection was lost") from None
        if not chunk:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)  # most bodies come in one chunk: no copy
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise too_large


def parse_json(data: bytes) -> Any:
    """The JSON document in ``data``; 400 naming the problem otherwise."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise HttpError(
            400, f"The request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except UnicodeDecodeError:
        raise HttpError(400, "The request body is not valid JSON: it is not UTF-8 text") from None
    except RecursionError:
        raise HttpError(400, "The request body is not valid JSON: it is nested too deeply") from None
