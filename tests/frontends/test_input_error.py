"""register.InputError: a stage that refuses a client's input makes it the client's error on every protocol
(MSService per-instance error code 2, gRPC INVALID_ARGUMENT, HTTP 400), while any other exception stays a
failure of the servable (code 3, INTERNAL, 500). The other instances of the request are answered."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from mindserve._proto import ms_service_pb2 as pb
from support import servables
from support.processes import free_port, start_server
from support.rest import request

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

PICKY_CONFIG = """
import numpy as np
from mindserve.server import register


def check(x):
    if np.isnan(x).any():
        raise ValueError("the stage broke on a NaN")
    if (x < 0).any():
        raise register.InputError(f"x must not be negative, got {float(x.min())}")
    return x


@register.register_method(output_names=["y"])
def accept(x):
    return register.add_stage(check, x, outputs_count=1)
"""
REFUSED = (
    "Call Function 'picky.check' Failed, method: 'accept', stage index(begin with 1): 1, error msg: x must "
    "not be negative, got -1.0"
)
BROKEN = (
    "Call Function 'picky.check' Failed, method: 'accept', stage index(begin with 1): 1, error msg: the stage "
    "broke on a NaN"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("input_error")
    root = str(tmp / "servables")
    servables.write(root, "picky", PICKY_CONFIG)
    address, rest = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    process = start_server(
        tmp,
        f"""
        server.start_servables(server.ServableStartConfig({root!r}, "picky", device_ids=0))
        server.start_grpc_server({address!r})
        server.start_restful_server({rest!r})
    """,
        address,
    )
    process.rest = rest
    yield process
    process.stop()


def test_mindspore_per_instance_codes(server):
    req = pb.PredictRequest(servable_spec=pb.ServableSpec(name="picky", method_name="accept"))
    for value in (1.0, -1.0, float("nan")):
        tensor = req.instances.add().items["x"]
        tensor.dtype, tensor.data = pb.MS_FLOAT32, np.float32(value).tobytes()
    with grpc.insecure_channel(server.address) as channel:
        reply = channel.unary_unary(
            "/mindspore.serving.proto.MSService/Predict",
            request_serializer=pb.PredictRequest.SerializeToString,
            response_deserializer=pb.PredictReply.FromString,
        )(req, timeout=30)
    assert [(e.error_code, e.error_msg.decode()) for e in reply.error_msg] == [(0, ""), (2, REFUSED), (3, BROKEN)]
    assert np.frombuffer(reply.instances[0].items["y"].data, np.float32).tolist() == [1.0]


@pytest.mark.parametrize(
    "value, status, message",
    [(-1.0, "StatusCode.INVALID_ARGUMENT", REFUSED), (float("nan"), "StatusCode.INTERNAL", BROKEN)],
)
def test_open_inference_protocol_over_grpc(server, value, status, message):
    with grpcclient.InferenceServerClient(server.address) as client:
        x = grpcclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.array([value], np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("picky", [x])
    assert (info.value.status(), info.value.message()) == (status, message)


@pytest.mark.parametrize("value, status, message", [(-1.0, 400, REFUSED), (float("nan"), 500, BROKEN)])
def test_rest_forms(server, value, status, message):
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [value if value == value else 0]}]}
    if value != value:  # JSON has no NaN: send it as raw binary data instead
        raw = np.array([value], np.float32).tobytes()
        head = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"parameters":{"binary_data_size":4}}]}'
        reply = request(
            server.rest,
            "POST",
            "/v2/models/picky/infer",
            head + raw,
            headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
        )
    else:
        reply = request(server.rest, "POST", "/v2/models/picky/infer", body)
    assert (reply.status, reply.json()) == (status, {"error": message})
