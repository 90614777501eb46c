"""How the gRPC frontends answer an error: one table from the error's kind (mindserve._errors) to its status."""
from __future__ import annotations

import grpc

from mindserve._errors import (
    AlreadyExists,
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
}


def status_of(error: ServingError) -> grpc.StatusCode:
    """The gRPC status that answers ``error``."""
    return GRPC_STATUS[kind_of(error)]
