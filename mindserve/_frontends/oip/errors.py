"""The kinds of failure of an Open Inference Protocol request, independent of the transport. Each frontend maps a
kind to its status: gRPC NOT_FOUND / INVALID_ARGUMENT / UNAVAILABLE / RESOURCE_EXHAUSTED / INTERNAL, HTTP 404 /
400 / 503 / 429 / 500."""
from __future__ import annotations

from mindserve._errors import (INVALID_INPUTS, QUEUE_FULL_MESSAGE_PREFIX, SERVABLE_UNAVAILABLE, WORKER_UNAVAILABLE,
                               ServingError)

NOT_FOUND = "not_found"        # no such model or version
BAD_REQUEST = "bad_request"    # a malformed request or bad inputs
UNAVAILABLE = "unavailable"    # no live worker
EXHAUSTED = "exhausted"        # the bounded request queue is full
INTERNAL = "internal"          # a failing stage or model, or a defect of the server

_KIND_OF_CODE = {
    INVALID_INPUTS: BAD_REQUEST,
    WORKER_UNAVAILABLE: UNAVAILABLE,
    SERVABLE_UNAVAILABLE: UNAVAILABLE,
}


class OipError(Exception):
    """An error of the OIP frontends' own, answered with ``kind`` and ``message``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


def kind_of(error: ServingError) -> str:
    """The kind of a ServingError: a full queue is told by its text (the wire contract has no code of its own for
    it), bad inputs and missing workers by their codes, everything else (failures in the servable's stages or
    models, system errors) is internal."""
    if error.message.startswith(QUEUE_FULL_MESSAGE_PREFIX):
        return EXHAUSTED
    return _KIND_OF_CODE.get(error.code, INTERNAL)


def not_found(message: str) -> OipError:
    return OipError(NOT_FOUND, message)


def bad_request(message: str) -> OipError:
    return OipError(BAD_REQUEST, message)
