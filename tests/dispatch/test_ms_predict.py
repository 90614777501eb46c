"""MindSpore Serving's one prediction (mindserve._frontends.mindspore.predict), whatever door carries it (gRPC
Predict, REST /model), in process over in-memory servable versions: the request's checks, each instance checked
on its own, the valid ones run and merged back in order, MindSpore's texts, what the metrics count."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mindserve._errors import InvalidInput, NotServed
from mindserve._frontends.mindspore import predict
from mindserve._metrics import requests as request_metrics
from mindserve._tensor import RawTensor
from support.fake_groups import FakeGroup, dispatcher_of

MISSING_X2 = (
    "Cannot find input x2 in instance input , servable add, method add: the method takes x1, x2; the instance gives x1"
)


def tensor_of(name: str, value) -> RawTensor:
    """A wire value as a door would decode it: here a list of two floats."""
    if not isinstance(value, list) or len(value) != 2:
        raise InvalidInput(f"Instances input {name} check failed, detail: two numbers please")
    return RawTensor(11, (2,), np.array(value, np.float32).tobytes())


def predict_all(dispatcher, instances: list, servable: str = "add", method: str = "add", version: int = 0):
    async def scenario():
        route = predict.resolve(dispatcher, servable, method, version, len(instances))
        names = route.signature.inputs
        checked = predict.check_instances(
            instances, lambda i, instance: predict.instance_inputs(instance, names, servable, method, tensor_of)
        )
        return await predict.run(dispatcher, route, checked)

    return asyncio.run(scenario())


def values(outcome: dict) -> dict:
    return {name: np.frombuffer(t.data, np.float32).tolist() for name, t in outcome.items()}


def test_valid_instances_run_together_and_come_back_in_order():
    group = FakeGroup("add", 1)
    outcomes = predict_all(dispatcher_of(group), [{"x1": [1, 2], "x2": [3, 4]}, {"x1": [5, 6], "x2": [7, 8]}])
    assert [values(o) for o in outcomes] == [{"x1": [1, 2], "x2": [3, 4]}, {"x1": [5, 6], "x2": [7, 8]}]
    assert group.calls == [("add", 2, 0)]


def test_a_bad_instance_fails_alone_in_its_place_with_mindspore_texts():
    group = FakeGroup("add", 1)
    outcomes = predict_all(
        dispatcher_of(group),
        [
            {"x1": [1, 2]},
            {"x1": [5, 6], "x2": [7, 8]},
            {"x1": [1, 2], "x2": [3, 4], "x3": [0, 0]},
            {"x1": [1, 2], "x2": "no"},
        ],
    )
    assert isinstance(outcomes[0], InvalidInput)
    assert outcomes[0].message == MISSING_X2
    assert values(outcomes[1]) == {"x1": [5, 6], "x2": [7, 8]}
    assert isinstance(outcomes[2], InvalidInput)
    assert outcomes[2].message == "Unexpected input x3 in instance input , servable add, method add takes x1, x2"
    assert outcomes[3].message == "Instances input x2 check failed, detail: two numbers please"
    assert group.calls == [("add", 1, 0)]  # only the valid instance ran


def test_no_valid_instance_runs_nothing():
    group = FakeGroup("add", 1)
    outcomes = predict_all(dispatcher_of(group), [{"x1": [1, 2]}])
    assert [o.message for o in outcomes] == [MISSING_X2]
    assert group.calls == []


def test_whole_request_errors_come_before_any_instance_is_read():
    dispatcher = dispatcher_of(FakeGroup("add", 1))
    dispatcher.max_request_instances = 2
    with pytest.raises(InvalidInput) as empty:
        predict_all(dispatcher, [])
    assert empty.value.message == "Instances count of request cannot be 0, servable: add, method: add"
    with pytest.raises(InvalidInput) as many:
        predict_all(dispatcher, [object()] * 3)
    assert many.value.message == "Instances count 3 of request exceeds the limit 2, servable: add, method: add"
    with pytest.raises(NotServed):
        predict_all(dispatcher, [object()], servable="nosuch")


def test_a_request_with_a_bad_instance_counts_as_failed_for_its_reason():
    dispatcher = dispatcher_of(FakeGroup("add", 1))

    async def one(instances: list) -> None:
        with dispatcher.requests.tallied(request_metrics.REST_MS):
            route = predict.resolve(dispatcher, "add", "add", 0, len(instances))
            checked = predict.check_instances(
                instances,
                lambda i, instance: predict.instance_inputs(instance, route.signature.inputs, "add", "add", tensor_of),
            )
            await predict.run(dispatcher, route, checked)

    async def scenario():
        await one([{"x1": [1, 2], "x2": [3, 4]}])
        await one([{"x1": [1, 2]}, {"x1": [1, 2], "x2": [3, 4]}])

    asyncio.run(scenario())
    series = dispatcher.requests.series[("add", "1", "add", "rest_ms")]
    assert (series.success, series.failures) == (1, {"invalid_input": 1})
