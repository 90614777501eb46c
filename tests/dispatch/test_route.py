"""Routes and method signatures: what the dispatcher resolves a request to and what frontends read from it."""

from __future__ import annotations

import dataclasses

import pytest

from mindserve._servable.signature import MethodSignature, TensorSpec


def test_a_signature_from_a_worker_report():
    reported = {
        "inputs": ["x1", "x2"],
        "outputs": ["y"],
        "input_specs": [{"dtype": 11, "shape": [2, 2]}, {"dtype": 0, "shape": None}],
        "output_specs": [{"dtype": 11, "shape": [-1, 2]}],
    }
    signature = MethodSignature.from_report(reported)
    assert signature == MethodSignature(
        ("x1", "x2"), ("y",), (TensorSpec(11, (2, 2)), TensorSpec(0, None)), (TensorSpec(11, (-1, 2)),)
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        signature.inputs = ("z",)  # type: ignore[misc]


def test_a_report_without_specs_knows_nothing_of_the_tensors():
    signature = MethodSignature.from_report({"inputs": ["x"], "outputs": ["y", "z"]})
    assert signature.input_specs == (TensorSpec(0, None),)
    assert signature.output_specs == (TensorSpec(0, None), TensorSpec(0, None))
