"""The typed error family (mindserve._errors): raised below the frontends, mapped once per transport."""

from __future__ import annotations

import pytest

from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._errors import (
    DROPPED_CANCELLED,
    DROPPED_DEADLINE,
    FAILED,
    INVALID_INPUTS,
    SERVABLE_UNAVAILABLE,
    SYSTEM_ERROR,
    WORKER_UNAVAILABLE,
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
    from_worker,
    kind_of,
)
from mindserve._frontends.grpc.status import GRPC_STATUS
from mindserve._frontends.rest.common import HTTP_STATUS

KINDS = (
    InvalidInput,
    NotServed,
    NoLiveWorker,
    QueueFull,
    StageFailed,
    WorkerLost,
    Internal,
    Unauthenticated,
    PermissionDenied,
    KeyRequired,
    AlreadyExists,
    FeatureDisabled,
    DeadlineExceeded,
    Cancelled,
)


def test_every_kind_has_an_answer_on_every_transport():
    assert set(GRPC_STATUS) == set(KINDS) == set(HTTP_STATUS)


def test_dropped_work_answers_with_its_reason():
    import grpc

    assert [(GRPC_STATUS[k], HTTP_STATUS[k]) for k in (DeadlineExceeded, Cancelled)] == [
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.CANCELLED, 499),
    ]
    late, gone = from_worker(DROPPED_DEADLINE, "late"), from_worker(DROPPED_CANCELLED, "gone")
    assert (type(late), late.code, type(gone), gone.code) == (DeadlineExceeded, FAILED, Cancelled, FAILED)


def test_access_errors_answer_as_triton_and_oauth_do():
    import grpc

    assert [(GRPC_STATUS[k], HTTP_STATUS[k]) for k in (Unauthenticated, PermissionDenied, KeyRequired)] == [
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.UNAUTHENTICATED, 403),
    ]


@pytest.mark.parametrize(
    "kind, code",
    [
        (InvalidInput, INVALID_INPUTS),
        (NotServed, SERVABLE_UNAVAILABLE),
        (NoLiveWorker, SERVABLE_UNAVAILABLE),
        (QueueFull, FAILED),
        (StageFailed, SYSTEM_ERROR),
        (WorkerLost, WORKER_UNAVAILABLE),
        (Internal, SYSTEM_ERROR),
    ],
)
def test_each_kind_keeps_its_msservice_code(kind, code):
    error = kind("text")
    assert (error.code, error.message, str(error), kind_of(error)) == (code, "text", "text", kind)
    assert kind("text", 7).code == 7  # a code of its own where MSService's replies have another


@pytest.mark.parametrize(
    "code, kind",
    [
        (INVALID_INPUTS, InvalidInput),
        (WORKER_UNAVAILABLE, WorkerLost),
        (SERVABLE_UNAVAILABLE, NoLiveWorker),
        (FAILED, StageFailed),
        (SYSTEM_ERROR, StageFailed),
        (99, StageFailed),
    ],
)
def test_errors_from_workers_and_untyped_errors_are_kinds_by_code(code, kind):
    error = from_worker(code, "text")
    assert (type(error), error.code, error.message) == (kind, code, "text")
    assert kind_of(ServingError(code, "text")) is kind


def test_the_dispatcher_tells_not_served_from_no_live_worker():
    dispatcher = Dispatcher()
    with pytest.raises(NotServed) as info:
        dispatcher.resolve("nope", "predict", 0)
    assert (info.value.code, info.value.message) == (
        SERVABLE_UNAVAILABLE,
        "Request servable(nope) method(predict) , servable is not available: servable 'nope' is "
        "not served; no servable is served",
    )
    with pytest.raises(NotServed, match=r"version\(3\) , servable is not available"):
        dispatcher.resolve("nope", "predict", 3)
