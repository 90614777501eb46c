"""The bundled add_sub servable (MindSpore Serving's two-model pipeline), served by its example script on a
unix socket: exact float32 results of each method, and the errors of bad instances."""

from __future__ import annotations

import numpy as np
import pytest

from mindserve.client import Client
from support.examples import run_example_client, start_example_server

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

INPUT_NAMES = ("x1", "x2", "x3")
ONE = np.float32(1)


@pytest.fixture(scope="module")
def add_sub_address(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("add_sub")
    server = start_example_server(tmp, "add_sub", f"unix:{tmp}/add_sub.sock")
    yield server.address
    assert server.stop() == 0, server.output


def _instances(count: int, seed: int) -> list[dict]:
    """Float32 [2, 2] inputs with fractional values, so that the order of additions shows in the last bits."""
    rng = np.random.default_rng(seed)
    return [{name: rng.uniform(-100, 100, (2, 2)).astype(np.float32) for name in INPUT_NAMES} for _ in range(count)]


def _only_model(x1: np.ndarray, x2: np.ndarray, x3: np.ndarray) -> np.ndarray:
    """add_sub_only_model in float32, in the models' order."""
    return (x1 + x2) - x3


def _complex(x1: np.ndarray, x2: np.ndarray, x3: np.ndarray) -> np.ndarray:
    """add_sub_complex in float32, in the stages' order."""
    return (((x1 + x2) + ONE) - x3) + ONE


@pytest.mark.parametrize(
    "method, expected",
    [("add_sub_only_model", _only_model), ("add_sub_complex", _complex), ("add_sub_call_model", _complex)],
)
def test_method_gives_exact_float32_result(add_sub_address, method, expected):
    instances = _instances(5, seed=len(method))
    result = Client(add_sub_address, "add_sub", method).infer(instances)
    assert isinstance(result, list) and len(result) == 5, result
    for instance, item in zip(instances, result):
        assert list(item) == ["y"], item
        assert item["y"].dtype == np.float32 and item["y"].shape == (2, 2)
        np.testing.assert_array_equal(item["y"], expected(*(instance[name] for name in INPUT_NAMES)))


def test_pipeline_values_of_the_mindspore_example(add_sub_address):
    """x1 = x2 = x3 = 1: 1 + 1 - 1 = 1 with models only, 1 + 1 + 1 - 1 + 1 = 3 with the Python stages."""
    instance = {name: np.ones((2, 2), np.float32) for name in INPUT_NAMES}
    for method, value in (("add_sub_only_model", 1), ("add_sub_complex", 3), ("add_sub_call_model", 3)):
        result = Client(add_sub_address, "add_sub", method).infer([instance, instance])
        for item in result:
            np.testing.assert_array_equal(item["y"], np.full((2, 2), value, np.float32))


# x3 is the second input of the subtracting model
SUB_X3_INT32 = ": input 'x2' of model tensor_sub.onnx takes float32 [2, 2], given int32 [2, 2]"


@pytest.mark.parametrize(
    "method, error",
    [
        (
            "add_sub_only_model",
            "Given model input 1 data type kMSI_Int32 not match the data type kMSI_Float32 defined in "
            "model" + SUB_X3_INT32,
        ),
        (
            "add_sub_complex",
            "Given model input 1 data type kMSI_Int32 not match the data type kMSI_Float32 defined in "
            "model" + SUB_X3_INT32,
        ),
        (
            "add_sub_call_model",
            "Call Function 'add_sub.add_sub_with_calls' Failed, method: 'add_sub_call_model', stage "
            "index(begin with 1): 1, error msg: Given model input 1 data type kMSI_Int32 not match "
            "the data type kMSI_Float32 defined in model" + SUB_X3_INT32,
        ),
    ],
)
def test_int32_x3_fails_alone_in_the_second_model(add_sub_address, method, error):
    instances = _instances(3, seed=7)
    instances[1]["x3"] = np.ones((2, 2), np.int32)
    result = Client(add_sub_address, "add_sub", method).infer(instances)
    assert result[1] == {"error": error}
    expected = _only_model if method == "add_sub_only_model" else _complex
    for i in (0, 2):
        np.testing.assert_array_equal(result[i]["y"], expected(*(instances[i][name] for name in INPUT_NAMES)))


def test_x3_of_wrong_size_is_refused(add_sub_address):
    instances = _instances(2, seed=3)
    instances[0]["x3"] = np.ones(3, np.float32)
    result = Client(add_sub_address, "add_sub", "add_sub_complex").infer(instances)
    assert result[0] == {
        "error": "Given model input 1 size 12 not match the size 16 defined in model: input 'x2' of "
        "model tensor_sub.onnx takes float32 [2, 2], given float32 [3]"
    }
    np.testing.assert_array_equal(result[1]["y"], _complex(*(instances[1][name] for name in INPUT_NAMES)))


def test_missing_x3_fails_the_request(add_sub_address):
    instance = {"x1": np.ones((2, 2), np.float32), "x2": np.ones((2, 2), np.float32)}
    result = Client(add_sub_address, "add_sub", "add_sub_complex").infer([instance])
    assert result == {
        "error": "Cannot find input x3 in instance input , servable add_sub, method add_sub_complex: "
        "the method takes x1, x2, x3; the instance gives x1, x2"
    }


def test_example_client(add_sub_address):
    printed = run_example_client("add_sub", add_sub_address)
    lines = [line for line in printed.splitlines() if line and not line.startswith(" ")]
    assert [line.split(":", 1)[0] for line in lines] == ["add_sub_only_model", "add_sub_complex", "add_sub_call_model"]
    assert "error" not in printed
