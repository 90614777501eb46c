"""Property tests of every request decoder against a running server: any bytes, and structurally valid messages
with hostile values, get an answer of the contract (OK, or a clear INVALID_ARGUMENT / NOT_FOUND /
RESOURCE_EXHAUSTED; HTTP 200 / 400 / 404 / 413 / 415, JSON), never UNKNOWN, INTERNAL or a traceback; the
workers stay the same processes, and a normal request afterwards is answered correctly.

Examples are derandomized (the same ones every run, so CI is repeatable); ``MINDSERVE_FUZZ_PROFILE=explore``
draws 2000 new ones per test for a longer hunt. The C readers have coverage-guided fuzzers of their own
(native/fuzz).
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mindserve._proto import ms_service_pb2 as pb
from support.fuzz import fuzz_settings
from support.messages import grpc_inference as oip
from support.paths import BUNDLED_SERVABLES
from support.processes import child_pids, free_port, start_server
from support.rest import Reply
from support.rest import request as http_request

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

FUZZ = fuzz_settings(120)

PREDICT = "/mindspore.serving.proto.MSService/Predict"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
GRPC_ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
HTTP_ALLOWED = {200, 400, 404, 413, 415}
X = np.arange(4, dtype=np.float32).reshape(2, 2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    address, rest = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    process = start_server(
        tmp,
        f"""
        server.start_servables([server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0),
                                server.ServableStartConfig({BUNDLED_SERVABLES!r}, "iris", device_ids=0)])
        server.start_grpc_server({address!r})
        server.start_restful_server({rest!r})
    """,
        address,
    )
    process.rest = rest
    process.workers = sorted(child_pids(process.proc.pid))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture(autouse=True)
def still_serving(server, channel):
    """After each property: the same workers, and add answers correctly on both gRPC protocols."""
    yield
    assert sorted(child_pids(server.proc.pid)) == server.workers
    request = pb.PredictRequest(servable_spec=pb.ServableSpec(name="add", method_name="add_common"))
    tensor = pb.Tensor(shape=pb.TensorShape(dims=[2, 2]), dtype=pb.MS_FLOAT32, data=X.tobytes())
    request.instances.add(items={"x1": tensor, "x2": tensor})
    reply = pb.PredictReply.FromString(channel.unary_unary(PREDICT)(request.SerializeToString(), timeout=30))
    assert np.frombuffer(reply.instances[0].items["y"].data, np.float32).tolist() == (X * 2).ravel().tolist()


def _grpc_outcome(channel: grpc.Channel, method: str, data: bytes):
    """The reply bytes, or the RpcError, after checking that an error is one of the contract's."""
    try:
        return channel.unary_unary(method)(data, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() in GRPC_ALLOWED, (exc.code(), exc.details())
        assert "Traceback" not in (exc.details() or "")
        return exc


def _check_predict_reply(data: bytes) -> None:
    reply = pb.PredictReply.FromString(data)
    for entry in reply.error_msg:
        assert 0 <= entry.error_code <= 5, entry
        assert b"Traceback" not in entry.error_msg
        # a request's own values may fail its stages (iris' Python stage), never the server
        assert not entry.error_msg.startswith(b"Predict failed"), entry.error_msg


# ---------------------------------------------------------------------------------------------------- MSService

NAMES = st.sampled_from(["add", "iris", "", "nope", "add\x00", "a" * 300])
METHODS = st.sampled_from(["add_common", "add_cast", "predict", "predict_with_puid", "", "zz"])
INPUTS = st.sampled_from(["x1", "x2", "x", "puid", "", "\u00e9"])
DIMS = st.lists(st.one_of(st.integers(-3, 5), st.sampled_from([0, 1 << 31, (1 << 63) - 1, -(1 << 63)])), max_size=20)
DTYPES = st.one_of(st.integers(0, 15), st.sampled_from([16, 1 << 20, (1 << 31) - 1, -1]))


@st.composite
def hostile_tensors(draw) -> pb.Tensor:
    tensor = pb.Tensor(dtype=draw(DTYPES))
    tensor.shape.dims.extend(draw(DIMS))
    kind = draw(st.sampled_from(["data", "bytes_val", "both", "shm", "none"]))
    if kind in ("data", "both"):
        tensor.data = draw(st.binary(max_size=64))
    if kind in ("bytes_val", "both"):
        tensor.bytes_val.extend(draw(st.lists(st.binary(max_size=16), max_size=3)))
    if kind == "shm":
        tensor.shm_data.memory_key = draw(st.text(max_size=20))
        tensor.shm_data.data_size = draw(st.integers(0, (1 << 64) - 1))
    return tensor


@st.composite
def hostile_predicts(draw) -> bytes:
    request = pb.PredictRequest(
        servable_spec=pb.ServableSpec(
            name=draw(NAMES), method_name=draw(METHODS), version_number=draw(st.sampled_from([0, 1, 2, (1 << 64) - 1]))
        )
    )
    for _ in range(draw(st.integers(0, 4))):
        instance = request.instances.add()
        for name in draw(st.lists(INPUTS, max_size=3, unique=True)):
            instance.items[name].CopyFrom(draw(hostile_tensors()))
    return request.SerializeToString()


@FUZZ
@given(data=st.binary(max_size=600))
def test_msservice_any_bytes(channel, data):
    outcome = _grpc_outcome(channel, PREDICT, data)
    if isinstance(outcome, bytes):
        _check_predict_reply(outcome)


@FUZZ
@given(data=hostile_predicts())
def test_msservice_hostile_values(channel, data):
    outcome = _grpc_outcome(channel, PREDICT, data)
    if isinstance(outcome, bytes):
        _check_predict_reply(outcome)


# ------------------------------------------------------------------------------------------- OIP over gRPC

MODELS = st.sampled_from(["add.add_common", "add", "iris.predict", "iris", "", "nope.x", "add.add_common.x"])
DATATYPES = st.sampled_from(["FP32", "FP64", "INT64", "INT32", "UINT8", "BOOL", "BYTES", "FP16", "", "fp32", "X"])


@st.composite
def hostile_model_infers(draw) -> bytes:
    request = oip.ModelInferRequest(
        model_name=draw(MODELS), model_version=draw(st.sampled_from(["", "1", "x", "9"])), id=draw(st.text(max_size=8))
    )
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(name=draw(INPUTS), datatype=draw(DATATYPES))
        tensor.shape.extend(draw(DIMS))
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=64)))
        elif draw(st.booleans()):
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=8)))
        else:
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=4)))
    if raw and draw(st.booleans()):
        request.raw_input_contents.append(b"extra")
    for name in draw(st.lists(st.sampled_from(["y", "label", "zz"]), max_size=2)):
        request.outputs.add(name=name)
    return request.SerializeToString()


@FUZZ
@given(data=st.binary(max_size=600))
def test_oip_grpc_any_bytes(channel, data):
    outcome = _grpc_outcome(channel, MODEL_INFER, data)
    if isinstance(outcome, bytes):
        oip.ModelInferResponse.FromString(outcome)


@FUZZ
@given(data=hostile_model_infers())
def test_oip_grpc_hostile_values(channel, data):
    outcome = _grpc_outcome(channel, MODEL_INFER, data)
    if isinstance(outcome, bytes):
        oip.ModelInferResponse.FromString(outcome)


# ---------------------------------------------------------------------------------------------------- REST

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(), st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def v2_bodies(draw) -> dict:
    inputs = []
    for _ in range(draw(st.integers(0, 3))):
        entry = {
            "name": draw(st.one_of(INPUTS, JSON_VALUES)),
            "datatype": draw(st.one_of(DATATYPES, JSON_VALUES)),
            "shape": draw(st.one_of(DIMS, JSON_VALUES)),
        }
        if draw(st.booleans()):
            entry["data"] = draw(JSON_VALUES)
        if draw(st.booleans()):
            entry["parameters"] = draw(st.one_of(st.fixed_dictionaries({"binary_data_size": JSON_VALUES}), JSON_VALUES))
        inputs.append(entry)
    body: dict = {"inputs": inputs}
    if draw(st.booleans()):
        body["outputs"] = draw(JSON_VALUES)
    return body


def _check_http(reply: Reply) -> None:
    assert reply.status in HTTP_ALLOWED, (reply.status, reply.body[:300])
    document = json.loads(reply.body) if reply.body else None
    if reply.status != 200:
        assert isinstance(document, dict) and len(document) == 1, reply.body[:300]
        (text,) = document.values()
        assert isinstance(text, str) and "Traceback" not in text


@FUZZ
@given(model=MODELS, body=st.one_of(v2_bodies(), JSON_VALUES))
def test_v2_rest_hostile_json(server, model, body):
    path = f"/v2/models/{model or 'add'}/infer"
    _check_http(
        http_request(server.rest, "POST", path, json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    )


@FUZZ
@given(
    data=st.binary(max_size=400),
    header_length=st.one_of(
        st.none(),
        st.integers(-5, 500).map(str),
        st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=4),
    ),
)
def test_v2_rest_any_bytes(server, data, header_length):
    """(header values travel as Latin-1 bytes: those above 127 are not UTF-8, which the server must survive)"""
    headers = {"Content-Type": "application/octet-stream"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    _check_http(http_request(server.rest, "POST", "/v2/models/add.add_common/infer", data, headers=headers))


@FUZZ
@given(
    path=st.sampled_from(
        ["/model/add:add_common", "/model/iris:predict", "/model/add/version/1:add_cast", "/model/nope:x"]
    ),
    body=st.one_of(
        st.fixed_dictionaries({"instances": st.lists(st.dictionaries(INPUTS, JSON_VALUES, max_size=3), max_size=3)}),
        JSON_VALUES,
    ),
)
def test_mindspore_rest_hostile_json(server, path, body):
    _check_http(http_request(server.rest, "POST", path, json.dumps(body).encode()))


@FUZZ
@given(data=st.binary(max_size=400))
def test_mindspore_rest_any_bytes(server, data):
    _check_http(http_request(server.rest, "POST", "/model/add:add_common", data))
