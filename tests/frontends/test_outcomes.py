"""Where a request's outcome is recorded for the metrics, in process: the doors' one admission (its tally,
refusals, a client that goes away), each transport's one mapping of failures to answers (gRPC's status and text,
REST's status and body) noting the reason, and what the dispatcher notes itself (route and instances' results,
never a failure the door answers)."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from mindserve._errors import NotServed, QueueFull, StageFailed
from mindserve._frontends.admission import Admission, admitted
from mindserve._frontends.grpc.status import failure_status
from mindserve._frontends.grpc.strict_parse import InvalidMessage
from mindserve._frontends.rest.common import HttpError, failure_response
from mindserve._metrics import requests as request_metrics
from mindserve._metrics.requests import RequestMetrics
from mindserve._tensor import RawTensor
from support.fake_groups import FakeGroup, dispatcher_of

X = {"x1": RawTensor(11, (2,), bytes(8)), "x2": RawTensor(11, (2,), bytes(8))}


def failures(metrics: RequestMetrics, protocol: str = "ms") -> dict:
    series = metrics.series[("unknown", "unknown", "unknown", protocol)]
    return {"success": series.success, **series.failures}


def through_admission(metrics: RequestMetrics, admission: Admission, handle, protocol="ms"):
    async def refuse():
        return "refused"

    return asyncio.run(admitted(admission, metrics, protocol, handle, refuse, (), 10, lambda reply: 5))


def test_an_admitted_request_is_tallied_and_its_size_noted():
    metrics, admission = RequestMetrics(), Admission()
    sizes = []
    admission.leave = lambda nbytes=0: sizes.append(nbytes)  # type: ignore[method-assign]

    async def handle():
        return "answer"

    assert through_admission(metrics, admission, handle) == "answer"
    assert failures(metrics) == {"success": 1}
    assert sizes == [15]


def test_a_refused_request_counts_as_shutting_down_and_is_not_handled():
    metrics, admission = RequestMetrics(), Admission()
    admission.closed = True
    handled = []

    async def handle():
        handled.append(1)

    assert through_admission(metrics, admission, handle) == "refused"
    assert handled == [] and admission.in_flight == 0
    assert failures(metrics) == {"success": 0, "shutting_down": 1}


def test_a_client_that_goes_away_counts_as_cancelled_and_leaves_nothing_in_flight():
    metrics, admission = RequestMetrics(), Admission()

    async def handle():
        raise asyncio.CancelledError()

    with pytest.raises(asyncio.CancelledError):
        through_admission(metrics, admission, handle)
    assert failures(metrics) == {"success": 0, "cancelled": 1}
    assert admission.in_flight == 0


def test_a_request_that_is_not_an_inference_is_not_tallied():
    metrics, admission = RequestMetrics(), Admission()

    async def handle():
        return "ready"

    assert through_admission(metrics, admission, handle, protocol=None) == "ready"
    assert metrics.series == {}


def test_the_first_failure_noted_is_the_one_counted():
    metrics = RequestMetrics()
    with pytest.raises(RuntimeError):
        with metrics.tallied("ms"):
            request_metrics.note_failure(QueueFull("full"))
            request_metrics.note_failure(request_metrics.INVALID_INPUT)
            raise RuntimeError("then a defect")
    with metrics.tallied("ms"):
        request_metrics.note_failure(request_metrics.INVALID_INPUT)
    with pytest.raises(ValueError):
        with metrics.tallied("ms"):
            raise ValueError("a defect nobody answered")
    assert failures(metrics) == {"success": 0, "queue_full": 1, "invalid_input": 1, "internal": 1}
    request_metrics.note_failure(StageFailed("no request open: nothing to count"))  # (harmless)


def test_grpc_maps_each_failure_once_and_notes_its_reason():
    metrics = RequestMetrics()
    answers = []
    for exc in (
        InvalidMessage("bad field"),
        NotServed("no such servable"),
        QueueFull("full"),
        ZeroDivisionError("division by zero"),
    ):
        with metrics.tallied("v2"):
            try:
                raise exc
            except Exception as caught:
                answers.append(failure_status("ModelInfer", caught))
    assert answers == [
        (grpc.StatusCode.INVALID_ARGUMENT, "bad field"),
        (grpc.StatusCode.NOT_FOUND, "no such servable"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "full"),
        (grpc.StatusCode.INTERNAL, "ModelInfer failed: division by zero"),
    ]
    assert failures(metrics, "v2") == {"success": 0, "invalid_input": 1, "not_found": 1, "queue_full": 1, "internal": 1}


def test_rest_maps_each_failure_once_and_notes_its_reason():
    metrics = RequestMetrics()
    answers = []
    for exc in (
        HttpError(413, "too large"),
        HttpError(500, "broken"),
        NotServed("no such servable"),
        ZeroDivisionError("division by zero"),
    ):
        with metrics.tallied("rest_ms"):
            try:
                raise exc
            except Exception as caught:
                response = failure_response("Predict", caught, "error_msg")
                answers.append((response.status, json.loads(response.text or "")))
    assert answers == [
        (413, {"error_msg": "too large"}),
        (500, {"error_msg": "broken"}),
        (404, {"error_msg": "no such servable"}),
        (500, {"error_msg": "Predict failed: division by zero"}),
    ]
    assert failures(metrics, "rest_ms") == {"success": 0, "invalid_input": 1, "internal": 2, "not_found": 1}


def test_the_dispatcher_notes_route_and_results_and_leaves_failures_to_the_door():
    failing = FakeGroup("add", 1, answer=lambda instance: StageFailed("Call Function 'add.cast' Failed"))
    dispatcher = dispatcher_of(failing, FakeGroup("ok", 1))
    dispatcher.max_enqueued_requests = 0

    async def scenario():
        with dispatcher.requests.tallied("ms"):  # the queue is full: raised, and left to the door to note
            with pytest.raises(QueueFull):
                await dispatcher.run(dispatcher.resolve("ok", "add", 0), [X])
        dispatcher.max_enqueued_requests = 10
        with dispatcher.requests.tallied("ms"):
            await dispatcher.run(dispatcher.resolve("add", "add", 0), [X])
        with dispatcher.requests.tallied("ms"):
            await dispatcher.run(dispatcher.resolve("ok", "add", 0), [X])

    asyncio.run(scenario())
    series = dispatcher.requests.series
    assert series[("add", "1", "add", "ms")].failures == {"stage_failed": 1}
    ok = series[("ok", "1", "add", "ms")]
    assert (ok.success, ok.failures) == (2, {})
