"""MindSpore Serving's add example, served from the bundled servables directory."""

import numpy as np
import pytest

from mindserve.client import Client

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)


def _instances():
    return [{"x1": np.full((2, 2), i, np.float32), "x2": np.full((2, 2), i, np.float32)} for i in (1, 2, 3)]


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_add_common_three_instances(add_server, transport):
    address = add_server.address if transport == "tcp" else add_server.unix_address
    result = Client(address, "add", "add_common").infer(_instances())
    assert len(result) == 3
    for i, item in enumerate(result, start=1):
        assert list(item) == ["y"]
        assert item["y"].dtype == np.float32
        np.testing.assert_array_equal(item["y"], np.full((2, 2), 2 * i, np.float32))


def test_int32_instance_fails_alone_in_add_common_and_add_cast_accepts_it(add_server):
    instances = _instances()
    instances[1] = {"x1": np.ones((2, 2), np.int32), "x2": np.ones((2, 2), np.int32)}
    result = Client(add_server.address, "add", "add_common").infer(instances)
    assert result[1] == {
        "error": "Given model input 0 data type kMSI_Int32 not match the data type kMSI_Float32 "
        "defined in model: input 'x1' of model tensor_add.onnx takes float32 [2, 2], given "
        "int32 [2, 2]"
    }
    np.testing.assert_array_equal(result[0]["y"], np.full((2, 2), 2, np.float32))
    np.testing.assert_array_equal(result[2]["y"], np.full((2, 2), 6, np.float32))

    result = Client(add_server.address, "add", "add_cast").infer(instances)
    np.testing.assert_array_equal(result[1]["y"], np.full((2, 2), 2, np.float32))
    assert result[1]["y"].dtype == np.float32


def test_infer_async(add_server):
    pending = [Client(add_server.unix_address, "add", "add_common").infer_async(_instances()) for _ in range(4)]
    for future in pending:
        result = future.result()
        np.testing.assert_array_equal(result[2]["y"], np.full((2, 2), 6, np.float32))
