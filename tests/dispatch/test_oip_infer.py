"""The Open Inference Protocol's one inference (mindserve._frontends.oip.infer), whatever transport carries it,
in process over in-memory servable versions: model names, versions, inputs cut into instances with their checks,
outputs selected and stacked, errors typed with their texts."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mindserve._errors import InvalidInput, NotServed, StageFailed
from mindserve._frontends.oip.infer import infer
from mindserve._frontends.oip.tensors import RawInput
from mindserve._servable.signature import MethodSignature, TensorSpec
from mindserve._tensor import RawTensor
from support.fake_groups import FakeGroup, dispatcher_of

SUM = MethodSignature(
    ("x1", "x2"),
    ("y", "x1"),
    (TensorSpec(11, (2,)), TensorSpec(11, (2,))),
    (TensorSpec(11, (2,)), TensorSpec(11, (2,))),
)


def add(instance: dict) -> dict:
    """What a real add would answer: y = x1 + x2, and x1 back."""
    x1, x2 = (np.frombuffer(instance[n].data, np.float32) for n in ("x1", "x2"))
    return {"y": RawTensor(11, (2,), (x1 + x2).tobytes()), "x1": instance["x1"]}


def raw(name: str, array: np.ndarray, datatype: str = "FP32") -> RawInput:
    return RawInput(name, datatype, tuple(array.shape), array.tobytes())


X1 = np.arange(6, dtype=np.float32).reshape(3, 2)
X2 = np.ones((3, 2), np.float32)


def run(dispatcher, model: str, version: str, inputs, outputs=()):
    return asyncio.run(infer(dispatcher, model, version, lambda: inputs, list(outputs)))


def test_an_inference_is_cut_into_instances_run_and_stacked_back():
    group = FakeGroup("add", 1, {"sum": SUM}, answer=add)
    answer = run(dispatcher_of(group), "add", "", [raw("x1", X1), raw("x2", X2)])
    assert answer.served_version == 1
    assert [(o.name, o.datatype, o.shape) for o in answer.outputs] == [("y", "FP32", [3, 2]), ("x1", "FP32", [3, 2])]
    assert np.frombuffer(answer.outputs[0].data, np.float32).reshape(3, 2).tolist() == (X1 + X2).tolist()
    assert group.calls == [("sum", 3, 0)]


def test_only_the_requested_outputs_come_back_and_unknown_ones_are_named():
    dispatcher = dispatcher_of(FakeGroup("add", 1, {"sum": SUM}, answer=add))
    answer = run(dispatcher, "add.sum", "1", [raw("x1", X1), raw("x2", X2)], [("x1", {})])
    assert [o.name for o in answer.outputs] == ["x1"]
    with pytest.raises(InvalidInput) as unknown:
        run(dispatcher, "add", "", [raw("x1", X1), raw("x2", X2)], [("z", {})])
    assert unknown.value.message == "Cannot find output z in the outputs of servable add, method sum: y, x1"


def test_a_model_that_is_not_served_is_answered_before_its_inputs_are_made():
    dispatcher = dispatcher_of(FakeGroup("add", 1, {"sum": SUM}, answer=add))

    def never():
        raise AssertionError("the inputs were made")

    with pytest.raises(NotServed) as missing:
        asyncio.run(infer(dispatcher, "sub", "", never, []))
    assert missing.value.message == (
        "Model 'sub' is not found, models are named 'servable.method', or 'servable' "
        "for a servable with a single method"
    )
    with pytest.raises(NotServed) as version:
        asyncio.run(infer(dispatcher, "add", "7", never, []))
    assert version.value.message == "Model 'add' version 7 is not found, running versions: 1"


def test_inputs_are_checked_before_anything_runs():
    group = FakeGroup("add", 1, {"sum": SUM}, answer=add)
    dispatcher = dispatcher_of(group)
    with pytest.raises(InvalidInput) as missing:
        run(dispatcher, "add", "", [raw("x1", X1)])
    assert missing.value.message == (
        "Cannot find input x2 in request inputs , servable add, method sum: the method "
        "takes x1, x2; the request gives x1"
    )
    with pytest.raises(InvalidInput) as rows:
        run(dispatcher, "add", "", [raw("x1", X1), raw("x2", X2[:2])])
    assert "input dim 0 (instances) is 2, but input x1 has 3" in rows.value.message
    short = RawInput("x2", "FP32", (3, 2), X2.tobytes()[:-4])
    with pytest.raises(InvalidInput):
        run(dispatcher, "add", "", [raw("x1", X1), short])
    assert group.calls == []


def test_the_first_failed_instance_fails_the_inference():
    def failing(instance: dict):
        if np.frombuffer(instance["x1"].data, np.float32)[0] == 2.0:
            return StageFailed(
                "Call Function 'add.check' Failed, method: 'sum', stage index(begin with 1): 1, "
                "error msg: x1 is too large"
            )
        return add(instance)

    dispatcher = dispatcher_of(FakeGroup("add", 1, {"sum": SUM}, answer=failing))
    with pytest.raises(StageFailed) as failed:
        run(dispatcher, "add", "", [raw("x1", X1), raw("x2", X2)])
    assert failed.value.message.endswith("error msg: x1 is too large")
