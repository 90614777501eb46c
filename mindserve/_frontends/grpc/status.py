"""How the gRPC frontends answer an error: one table from the error's kind (mindserve._errors) to its status, and
the one place a gRPC door turns a failure into its status and text (recording it for the metrics)."""

from __future__ import annotations

import logging
from typing import Union

import grpc

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
from mindserve._frontends.grpc.strict_parse import InvalidMessage
from mindserve._metrics import requests as request_metrics

log = logging.getLogger("mindserve")

GRPC_STATUS: dict[type, grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotServed: grpc.StatusCode.NOT_FOUND,
    NoLiveWorker: grpc.StatusCode.UNAVAILABLE,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StageFailed: grpc.StatusCode.INTERNAL,
    WorkerLost: grpc.StatusCode.UNAVAILABLE,
    Internal: grpc.StatusCode.INTERNAL,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    KeyRequired: grpc.StatusCode.UNAUTHENTICATED,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FeatureDisabled: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
}


def status_of(error: ServingError) -> grpc.StatusCode:
    """The gRPC status that answers ``error``."""
    return GRPC_STATUS[kind_of(error)]


def failure_status(rpc: str, exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and text that answer a request of ``rpc`` that failed with ``exc``: a malformed message is
    INVALID_ARGUMENT, a ServingError its kind's status, anything else a defect of ours, logged and answered
    INTERNAL plainly (never UNKNOWN, never a traceback). The failure is noted on the request's tally."""
    cause: Union[Exception, str] = exc
    if isinstance(exc, InvalidMessage):
        cause, status, message = request_metrics.INVALID_INPUT, grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    elif isinstance(exc, ServingError):
        status, message = status_of(exc), exc.message
    else:
        log.exception("%s failed", rpc)
        status, message = grpc.StatusCode.INTERNAL, f"{rpc} failed: {exc}"
    request_metrics.note_failure(cause)
    return status, message
