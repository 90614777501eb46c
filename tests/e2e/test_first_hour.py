"""What a new user meets first: a Client that takes lists and scalars, a timeout, one bad value that does not
sink the other instances; inputs the method does not take refused on every protocol; a stage that reads its
own version folder; error texts that say what is served."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from mindserve.client import Client
from support import servables
from support.paths import BUNDLED_SERVABLES
from support.processes import free_port, start_server
from support.rest import request

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

LABELLED_CONFIG = """
import os
import numpy as np
from mindserve.server import register

with open(os.path.join(register.version_path(), "label.txt")) as f:
    LABEL = f.read().strip()


def label(x):
    with open(os.path.join(register.version_path(), "label.txt")) as f:
        return f.read().strip() + "/" + LABEL


@register.register_method(output_names=["label"])
def which(x):
    return register.add_stage(label, x, outputs_count=1)


def sleep(seconds):
    import time
    time.sleep(seconds.item())  # (a Python float arrives as a 1-element array)
    return seconds


@register.register_method(output_names=["y"])
def slow(seconds):
    return register.add_stage(sleep, seconds, outputs_count=1)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("first_hour")
    root = str(tmp / "servables")
    folder = servables.write(root, "labelled", LABELLED_CONFIG)
    for version in (1, 2):
        (tmp / "servables" / "labelled" / str(version)).mkdir()
        (tmp / "servables" / "labelled" / str(version) / "label.txt").write_text(f"version {version}\n")
    del folder
    address, rest = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    process = start_server(
        tmp,
        f"""
        server.start_servables([server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0),
                                server.ServableStartConfig({root!r}, "labelled", device_ids=0, version_number=1),
                                server.ServableStartConfig({root!r}, "labelled", device_ids=0, version_number=2)])
        server.start_grpc_server({address!r})
        server.start_restful_server({rest!r})
    """,
        address,
    )
    process.rest = rest
    yield process
    process.stop()


def test_a_stage_reads_its_own_version_folder(server):
    for version in (1, 2):
        with Client(server.address, "labelled", "which", version_number=version) as client:
            assert client.infer({"x": 0}) == [{"label": f"version {version}/version {version}"}]


def test_lists_and_scalars_take_the_type_the_method_takes(server):
    with Client(server.address, "add", "add_common") as client:
        result = client.infer({"x1": np.ones((2, 2), np.float32), "x2": np.ones((2, 2), np.float32)})
        np.testing.assert_array_equal(result[0]["y"], np.full((2, 2), 2, np.float32))
        # numpy would make int64 and float64 of these lists; the method's metadata says the model takes float32
        result = client.infer({"x1": [[1, 2], [3, 4]], "x2": [[1.0, 1.0], [1.0, 1.0]]})
    assert result[0]["y"].dtype == np.float32
    assert result[0]["y"].tolist() == [[2.0, 3.0], [4.0, 5.0]]
    # an array keeps its type: the server says what the model takes, in numpy's terms
    with Client(server.address, "add", "add_common") as client:
        result = client.infer({"x1": np.ones((2, 2)), "x2": [[1.0, 1.0], [1.0, 1.0]]})
    assert result == {
        "error": "Given model input 0 data type kMSI_Float64 not match the data type kMSI_Float32 "
        "defined in model: input 'x1' of model tensor_add.onnx takes float32 [2, 2], given "
        "float64 [2, 2]"
    }


def test_a_value_that_cannot_be_sent_fails_its_instance_alone(server):
    good = {"x1": np.ones((2, 2), np.float32), "x2": np.ones((2, 2), np.float32)}
    with Client(server.address, "add", "add_common") as client:
        result = client.infer([good, {"x1": [[1, 2], [3]], "x2": good["x2"]}, good])
        assert len(result) == 3 and set(result[0]) == {"y"} and set(result[2]) == {"y"}
        assert result[1]["error"].startswith("The list of input 'x1' is not a tensor: ")
        async_result = client.infer_async([good, {"x1": object(), "x2": good["x2"]}]).result()
        assert async_result[1] == {"error": "Not support value type <class 'object'> of input 'x1'"}
        with pytest.raises(RuntimeError, match="^The list of input 'x1' is not a tensor of numbers or bools"):
            client.infer({"x1": ["a", "b"], "x2": good["x2"]})  # one instance: nothing else to send


# past a call's deadline the server answers at once (the stage running meanwhile finishes, unanswered); its
# answer races the client's own timer by the loopback's latency, so either may reach the caller first
LATE = (
    {"error": "Grpc Error, (4, 'deadline exceeded'), Deadline Exceeded"},
    {
        "error": "Request servable(labelled) method(slow) version(1) , the request's deadline passed before its "
        "answer was ready (work not started by then is dropped)"
    },
)


def test_timeouts(server):
    with Client(server.address, "labelled", "slow", version_number=1, timeout=0.2) as client:
        assert client.infer({"seconds": 1.0}) in LATE
        assert client.infer({"seconds": 0.0}, timeout=30) == [{"y": 0.0}]
        assert client.infer_async({"seconds": 1.0}).result() in LATE
    with pytest.raises(RuntimeError, match="Parameter 'timeout' should be a positive number of seconds or None"):
        Client(server.address, "add", "add_common", timeout=0)


def test_an_input_the_method_does_not_take_is_refused_on_every_protocol(server):
    x = np.ones((2, 2), np.float32)
    expected = "Unexpected input x3 in instance input , servable add, method add_common takes x1, x2"
    with Client(server.address, "add", "add_common") as client:
        assert client.infer({"x1": x, "x2": x, "x3": x}) == {"error": expected}
    reply = request(
        server.rest, "POST", "/model/add:add_common", {"instances": [{"x1": x.tolist(), "x2": x.tolist(), "x3": 1}]}
    )
    assert (reply.status, reply.json()) == (200, {"instances": [{"error_msg": expected}]})  # (its instance failed)
    with grpcclient.InferenceServerClient(server.address) as client:
        inputs = [grpcclient.InferInput(n, [1, 2, 2], "FP32") for n in ("x1", "x2", "x3")]
        for i in inputs:
            i.set_data_from_numpy(x[None])
        with pytest.raises(InferenceServerException) as info:
            client.infer("add.add_common", inputs)
    assert (
        info.value.message() == "Unexpected input x3 in request inputs , servable add, method add_common takes x1, x2"
    )


def test_what_is_not_served_is_answered_with_what_is(server):
    with Client(server.address, "ad", "add_common") as client:
        assert client.infer({"x": 1}) == {
            "error": "Request servable(ad) method(add_common) , servable is not "
            "available: servable 'ad' is not served; served: add, labelled"
        }
    with Client(server.address, "labelled", "which", version_number=3) as client:
        assert client.infer({"x": 1}) == {
            "error": "Request servable(labelled) method(which) version(3) , servable "
            "is not available: the served versions of labelled are 1, 2"
        }
    with Client(server.address, "add", "add") as client:
        assert client.infer({"x": 1}) == {
            "error": "Request servable(add) method(add) , method is not available: "
            "servable add has methods add_cast, add_common"
        }
