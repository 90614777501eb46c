"""The Open Inference Protocol (KServe v2) over gRPC, on the MSService port, driven by the real
``tritonclient.grpc``: server and model state, metadata, inference of batches of instances, versions, output
selection, typed contents (raw ModelInferRequest messages), every error with its status and text, TLS, unix
sockets, and readiness while a servable has no live worker."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import struct
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.grpc import aio as tg_aio
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from mindserve._errors import (
    FAILED,
    INVALID_INPUTS,
    SERVABLE_UNAVAILABLE,
    SYSTEM_ERROR,
    WORKER_UNAVAILABLE,
    Internal,
    InvalidInput,
    NoLiveWorker,
    NotServed,
    QueueFull,
    ServingError,
    StageFailed,
    WorkerLost,
)
from mindserve._frontends.grpc.status import status_of
from mindserve.client import Client
from support import servables
from support.checks import assert_add_still_serves
from support.messages import grpc_inference as oip
from support.paths import BUNDLED_SERVABLES
from support.processes import ServerProcess, free_port, start_server, wait_until, worker_pids
from support.tls import start_tls_server

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
NOT_FOUND_HINT = "models are named 'servable.method', or 'servable' for a servable with a single method"
ADD_NOPE = "Model 'add.nope' is not found, {hint}: servable add has methods add_cast, add_common"
OIP_TYPES = "the data types are BOOL, INT8, UINT8, INT16, UINT16, INT32, UINT32, INT64, UINT64, FP16, FP32, FP64, BYTES"


# ---- servers and helpers ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oip_server(servable_dir, tmp_path_factory) -> Iterator[ServerProcess]:
    """add (bundled), echo, batch, versioned (versions 1 and 2) and probe, one worker each, on TCP and unix."""
    tmp = tmp_path_factory.mktemp("oip_server")
    extra = servables.make_probe_and_hold(str(tmp_path_factory.mktemp("oip_servables")))
    address = f"127.0.0.1:{free_port()}"
    unix_address = f"unix:{tmp}/oip.sock"
    server = start_server(
        tmp,
        f"""
        d = {servable_dir!r}
        server.start_servables([
            server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0),
            server.ServableStartConfig(d, "echo", device_ids=0),
            server.ServableStartConfig(d, "batch", device_ids=0),
            server.ServableStartConfig(d, "versioned", device_ids=0, version_number=1),
            server.ServableStartConfig(d, "versioned", device_ids=0, version_number=2),
            server.ServableStartConfig({extra!r}, "probe", device_ids=0)])
        server.start_grpc_server({address!r})
        server.start_grpc_server({unix_address!r})
    """,
        address,
        timeout=180,
    )
    server.unix_address = unix_address
    yield server
    server.stop()


@pytest.fixture(scope="module")
def triton(oip_server):
    with tg.InferenceServerClient(oip_server.address) as client:
        yield client


@pytest.fixture(scope="module")
def raw_channel(oip_server):
    channel = grpc.insecure_channel(oip_server.address)
    yield channel
    channel.close()


def infer_input(name: str, array: np.ndarray, datatype: str) -> tg.InferInput:
    tensor = tg.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def add_inputs(x1: np.ndarray, x2: np.ndarray, datatype: str = "FP32") -> list:
    return [infer_input("x1", x1, datatype), infer_input("x2", x2, datatype)]


def assert_error(info, status: str, message: str) -> None:
    assert isinstance(info.value, InferenceServerException)
    assert info.value.status() == f"StatusCode.{status}", info.value
    assert info.value.message() == message


def assert_infer_error(client, model: str, inputs: list, status: str, message: str, **kwargs) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, inputs, **kwargs)
    assert_error(info, status, message)


def raw_infer(channel: grpc.Channel, request) -> oip.ModelInferResponse:
    data = request if isinstance(request, bytes) else request.SerializeToString()
    reply = channel.unary_unary(MODEL_INFER)(data, timeout=60)
    return oip.ModelInferResponse.FromString(reply)


def raw_infer_error(channel: grpc.Channel, request) -> grpc.RpcError:
    data = request if isinstance(request, bytes) else request.SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(MODEL_INFER)(data, timeout=60)
    return info.value


def request_for(model: str, *inputs: tuple, version: str = "") -> oip.ModelInferRequest:
    """A ModelInferRequest with raw contents: inputs are (name, datatype, shape, bytes)."""
    request = oip.ModelInferRequest(model_name=model, model_version=version)
    for name, datatype, shape, data in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(data)
    return request


def fp32(shape, value: float = 1.0) -> bytes:
    return np.full(shape, value, np.float32).tobytes()


def bytes_tensor(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def good_add_request() -> oip.ModelInferRequest:
    return request_for(
        "add.add_common",
        ("x1", "FP32", [1, 2, 2], fp32((1, 2, 2), 1.5)),
        ("x2", "FP32", [1, 2, 2], fp32((1, 2, 2), 2.0)),
    )


# ---- server and model state -------------------------------------------------------------------------------------


def test_server_live_and_ready(triton):
    assert triton.is_server_live() is True
    assert triton.is_server_ready() is True


@pytest.mark.parametrize(
    "name, version",
    [
        ("add.add_common", ""),
        ("add.add_cast", ""),
        ("echo.echo", ""),
        ("batch.add_batched", ""),
        ("versioned", ""),
        ("versioned.predict", ""),
        ("versioned", "1"),
        ("versioned.predict", "2"),
        ("versioned", "0"),
    ],
)
def test_model_ready(triton, name, version):
    assert triton.is_model_ready(name, version) is True


@pytest.mark.parametrize(
    "name, version",
    [
        ("add", ""),
        ("nope", ""),
        ("add.nope", ""),
        ("", ""),
        ("versioned", "3"),
        ("add.add_common", "2"),
    ],
)
def test_model_not_served_is_not_ready(triton, name, version):
    assert triton.is_model_ready(name, version) is False


def test_model_ready_with_a_version_that_is_not_a_number(triton):
    with pytest.raises(InferenceServerException) as info:
        triton.is_model_ready("versioned", "v1")
    assert_error(info, "INVALID_ARGUMENT", "Model 'versioned' version 'v1' is not a version number")


def test_server_metadata(triton):
    metadata = triton.get_server_metadata()
    assert metadata.name == "mindserve"
    assert metadata.version == "0.1.0"
    assert list(metadata.extensions) == ["statistics", "model_stream_infer"]


def _tensors(entries) -> list:
    return [(t.name, t.datatype, list(t.shape)) for t in entries]


@pytest.mark.parametrize(
    "name, version, versions, inputs, outputs",
    [
        (
            "add.add_common",
            "",
            ["1"],
            [("x1", "FP32", [-1, 2, 2]), ("x2", "FP32", [-1, 2, 2])],
            [("y", "FP32", [-1, 2, 2])],
        ),
        # inputs that only a Python stage takes have no fixed data type or shape: "" and [-1] (just the instances)
        ("add.add_cast", "", ["1"], [("x1", "", [-1]), ("x2", "", [-1])], [("y", "FP32", [-1, 2, 2])]),
        ("batch.probe_fixed", "", ["1"], [("x", "FP32", [-1, 2])], [("y", "FP32", [-1, 2]), ("n", "INT64", [-1])]),
        (
            "batch.add_by_call_many",
            "",
            ["1"],
            [("x1", "", [-1]), ("x2", "", [-1])],
            [("a", "", [-1]), ("b", "", [-1]), ("c", "", [-1])],
        ),
        # a servable without version folders runs as version 0; outputs that are inputs passed through
        ("echo.echo2", "", ["0"], [("x1", "", [-1]), ("x2", "", [-1])], [("x1", "", [-1]), ("x2", "", [-1])]),
        ("versioned", "", ["1", "2"], [("x", "FP32", [-1, 2])], [("y", "FP32", [-1, 2])]),
        ("versioned.predict", "1", ["1", "2"], [("x", "FP32", [-1, 2])], [("y", "FP32", [-1, 2])]),
        ("probe.value_kind", "", ["0"], [("x", "", [-1])], [("kind", "", [-1])]),
    ],
)
def test_model_metadata(triton, name, version, versions, inputs, outputs):
    metadata = triton.get_model_metadata(name, version)
    assert metadata.name == name
    assert metadata.platform == "mindserve"
    assert list(metadata.versions) == versions
    assert _tensors(metadata.inputs) == inputs
    assert _tensors(metadata.outputs) == outputs


@pytest.mark.parametrize(
    "name, version, status, message",
    [
        ("nope", "", "NOT_FOUND", f"Model 'nope' is not found, {NOT_FOUND_HINT}"),
        ("add.nope", "", "NOT_FOUND", ADD_NOPE.format(hint=NOT_FOUND_HINT)),
        (
            "add",
            "",
            "NOT_FOUND",
            "Model 'add' is not found: servable add has 2 methods, name one as 'add.<method>' (add_cast, add_common)",
        ),
        ("versioned", "3", "NOT_FOUND", "Model 'versioned' version 3 is not found, running versions: 1, 2"),
        ("versioned", "-1", "INVALID_ARGUMENT", "Model 'versioned' version '-1' is not a version number"),
    ],
)
def test_model_metadata_errors(triton, name, version, status, message):
    with pytest.raises(InferenceServerException) as info:
        triton.get_model_metadata(name, version)
    assert_error(info, status, message)


def test_rpcs_not_offered_are_unimplemented(triton):
    with pytest.raises(InferenceServerException) as info:
        triton.get_model_config("add.add_common")
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert_add_still_serves("oip_grpc", triton)


# ---- inference --------------------------------------------------------------------------------------------------


def test_infer_add_batch_of_instances(triton):
    x1 = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    x2 = np.full((3, 2, 2), 0.5, np.float32)
    result = triton.infer("add.add_common", add_inputs(x1, x2))
    y = result.as_numpy("y")
    assert y.dtype == np.float32 and y.shape == (3, 2, 2)
    np.testing.assert_array_equal(y, x1 + x2)
    response = result.get_response()
    assert response.model_name == "add.add_common"
    assert response.model_version == "1"
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("y", "FP32", [3, 2, 2])]


def test_infer_int64_through_a_python_stage(triton):
    x1 = np.arange(8, dtype=np.int64).reshape(2, 2, 2)
    x2 = np.full((2, 2, 2), 10, np.int64)
    y = triton.infer("add.add_cast", add_inputs(x1, x2, "INT64")).as_numpy("y")
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, (x1 + x2).astype(np.float32))


def test_infer_batching_model(triton):
    x1 = np.arange(8, dtype=np.float32).reshape(4, 2)
    x2 = np.full((4, 2), -1.0, np.float32)
    y = triton.infer("batch.add_batched", add_inputs(x1, x2)).as_numpy("y")
    np.testing.assert_array_equal(y, x1 + x2)
    # three instances run as one batch padded to the model's fixed size 4
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    result = triton.infer("batch.probe_fixed", [infer_input("x", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    n = result.as_numpy("n")
    assert n.dtype == np.int64
    np.testing.assert_array_equal(n, np.array([4, 4, 4], np.int64))


@pytest.mark.parametrize(
    "dtype, datatype",
    [
        (np.float64, "FP64"),
        (np.float16, "FP16"),
        (np.int8, "INT8"),
        (np.uint16, "UINT16"),
        (np.int32, "INT32"),
        (np.uint64, "UINT64"),
        (np.bool_, "BOOL"),
    ],
)
def test_infer_echo_keeps_type_and_shape(triton, dtype, datatype):
    x = (np.arange(12).reshape(2, 3, 2) % 5).astype(dtype)
    result = triton.infer("echo.echo", [infer_input("x", x, datatype)])
    y = result.as_numpy("y")
    assert y.dtype == x.dtype and y.shape == (2, 3, 2)
    np.testing.assert_array_equal(y, x)
    assert result.get_response().outputs[0].datatype == datatype


def test_infer_bytes_and_str_instances(triton):
    x = np.array([b"ab", b"", b"\x00\xff\x10"], dtype=np.object_)
    y = triton.infer("echo.echo", [infer_input("x", x, "BYTES")]).as_numpy("y")
    assert y.shape == (3,)
    assert list(y) == [b"ab", b"", b"\x00\xff\x10"]
    # str instances travel as their UTF-8 bytes; shape [N, 1] is one element per instance too
    x = np.array([["héllo"], ["wörld"]], dtype=np.object_)
    result = triton.infer("echo.echo", [infer_input("x", x, "BYTES")])
    assert list(result.as_numpy("y")) == ["héllo".encode(), "wörld".encode()]
    assert list(result.get_response().outputs[0].shape) == [2]


def test_bytes_reach_python_stages_as_bytes_and_str_outputs_answer_as_bytes(triton):
    x = np.array([b"a", b"b"], dtype=np.object_)
    kinds = triton.infer("probe.value_kind", [infer_input("x", x, "BYTES")]).as_numpy("kind")
    assert list(kinds) == [b"bytes", b"bytes"]
    kinds = triton.infer("probe.value_kind", [infer_input("x", np.ones((2, 3), np.float32), "FP32")]).as_numpy("kind")
    assert list(kinds) == [b"ndarray", b"ndarray"]


def test_content_type_str_gives_python_stages_str(raw_channel):
    request = request_for("probe.value_kind", ("x", "BYTES", [2], bytes_tensor(b"a", "é".encode())))
    request.inputs[0].parameters["content_type"].string_param = "str"
    reply = raw_infer(raw_channel, request)
    assert reply.raw_output_contents[0] == bytes_tensor(b"str", b"str")
    request.raw_input_contents[0] = bytes_tensor(b"a", b"\xff")
    error = raw_infer_error(raw_channel, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "Instances input x check failed, detail: Instance tensor check failed: string input is not valid UTF-8"
    )


def test_scalar_outputs_stack_into_a_vector(triton):
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    result = triton.infer("probe.sum_all", [infer_input("x", x, "FP32")])
    total = result.as_numpy("total")
    assert total.shape == (3,) and total.dtype == np.float32
    np.testing.assert_array_equal(total, np.array([1.0, 5.0, 9.0], np.float32))


def test_same_length_outputs_stack(triton):
    y = triton.infer("probe.zeros_of_length", [infer_input("x", np.array([2, 2], np.int64), "INT64")]).as_numpy("y")
    np.testing.assert_array_equal(y, np.zeros((2, 2), np.float32))


def test_outputs_selection(triton):
    x1 = np.full((2, 2), 3.0, np.float32)
    x2 = np.full((2, 2), 4.0, np.float32)
    outputs = [tg.InferRequestedOutput("c"), tg.InferRequestedOutput("a")]
    result = triton.infer("batch.add_by_call_many", add_inputs(x1, x2), outputs=outputs)
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["c", "a"]
    np.testing.assert_array_equal(result.as_numpy("a"), np.full((2, 2), 7.0, np.float32))
    np.testing.assert_array_equal(result.as_numpy("c"), np.full((2, 2), 8.0, np.float32))
    assert result.as_numpy("b") is None
    # no selection: every output, in the method's order
    response = triton.infer("batch.add_by_call_many", add_inputs(x1, x2)).get_response()
    assert [o.name for o in response.outputs] == ["a", "b", "c"]


@pytest.mark.parametrize(
    "outputs, message",
    [
        (
            [tg.InferRequestedOutput("z")],
            "Cannot find output z in the outputs of servable batch, method add_by_call_many: a, b, c",
        ),
        ([tg.InferRequestedOutput("a"), tg.InferRequestedOutput("a")], "Output a is requested more than once"),
        ([tg.InferRequestedOutput("a", class_count=2)], "Output a: the classification extension is not supported"),
    ],
)
def test_outputs_selection_errors(triton, outputs, message):
    x = np.ones((1, 2), np.float32)
    assert_infer_error(triton, "batch.add_by_call_many", add_inputs(x, x), "INVALID_ARGUMENT", message, outputs=outputs)


def test_request_id_is_echoed(triton):
    x = np.ones((1, 2, 2), np.float32)
    assert triton.infer("add.add_common", add_inputs(x, x), request_id="req-42").get_response().id == "req-42"
    assert triton.infer("add.add_common", add_inputs(x, x)).get_response().id == ""


@pytest.mark.parametrize(
    "version, offset, answered", [("", 2.0, "2"), ("0", 2.0, "2"), ("1", 1.0, "1"), ("2", 2.0, "2")]
)
def test_model_version_selection(triton, version, offset, answered):
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    for name in ("versioned", "versioned.predict"):
        result = triton.infer(name, [infer_input("x", x, "FP32")], model_version=version)
        np.testing.assert_array_equal(result.as_numpy("y"), x + offset)
        assert result.get_response().model_version == answered
        assert result.get_response().model_name == name


def test_async_infer(triton):
    answers: queue.Queue = queue.Queue()
    x1 = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    x2 = np.ones((2, 2, 2), np.float32)
    triton.async_infer(
        "add.add_common",
        add_inputs(x1, x2),
        callback=lambda result, error: answers.put((result, error)),
        request_id="async-1",
    )
    result, error = answers.get(timeout=60)
    assert error is None
    np.testing.assert_array_equal(result.as_numpy("y"), x1 + x2)
    assert result.get_response().id == "async-1"
    triton.async_infer("nope", add_inputs(x1, x2), callback=lambda result, error: answers.put((result, error)))
    result, error = answers.get(timeout=60)
    assert result is None
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message() == f"Model 'nope' is not found, {NOT_FOUND_HINT}"


def test_asyncio_client(oip_server):
    async def run() -> None:
        async with tg_aio.InferenceServerClient(oip_server.address) as client:
            assert await client.is_server_ready()
            x = np.arange(4, dtype=np.float32).reshape(2, 2)
            results = await asyncio.gather(
                *(client.infer("versioned", [infer_input("x", x, "FP32")], model_version=v) for v in ("1", "2"))
            )
            np.testing.assert_array_equal(results[0].as_numpy("y"), x + 1)
            np.testing.assert_array_equal(results[1].as_numpy("y"), x + 2)

    asyncio.run(run())


def test_unix_socket(oip_server):
    with tg.InferenceServerClient(oip_server.unix_address) as client:
        assert client.is_server_ready()
        x = np.ones((1, 2, 2), np.float32)
        np.testing.assert_array_equal(
            client.infer("add.add_common", add_inputs(x, x)).as_numpy("y"), np.full((1, 2, 2), 2.0, np.float32)
        )


def test_msservice_on_the_same_port(oip_server, triton):
    result = Client(oip_server.address, "add", "add_common").infer(
        {"x1": np.ones((2, 2), np.float32), "x2": np.ones((2, 2), np.float32)}
    )
    np.testing.assert_array_equal(result[0]["y"], np.full((2, 2), 2.0, np.float32))
    assert_add_still_serves("oip_grpc", triton)


# ---- typed contents (raw ModelInferRequest messages) --------------------------------------------------------------


def test_typed_contents_fp32(raw_channel):
    request = oip.ModelInferRequest(model_name="add.add_common", id="typed")
    x1 = request.inputs.add(name="x1", datatype="FP32", shape=[2, 2, 2])
    x1.contents.fp32_contents.extend(range(8))
    x2 = request.inputs.add(name="x2", datatype="FP32", shape=[2, 2, 2])
    x2.contents.fp32_contents.extend([0.5] * 8)
    reply = raw_infer(raw_channel, request)
    assert reply.id == "typed" and reply.model_version == "1"
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [("y", "FP32", [2, 2, 2])]
    assert not reply.outputs[0].HasField("contents")
    np.testing.assert_array_equal(
        np.frombuffer(reply.raw_output_contents[0], np.float32), np.arange(8, dtype=np.float32) + 0.5
    )


@pytest.mark.parametrize(
    "datatype, field, values, dtype",
    [
        ("BOOL", "bool_contents", [True, False, True, True], np.bool_),
        ("INT8", "int_contents", [-128, 0, 5, 127], np.int8),
        ("INT16", "int_contents", [-32768, 1, 2, 32767], np.int16),
        ("INT32", "int_contents", [-(1 << 31), 1, 2, (1 << 31) - 1], np.int32),
        ("INT64", "int64_contents", [-(1 << 63), 1, 2, (1 << 63) - 1], np.int64),
        ("UINT8", "uint_contents", [0, 1, 200, 255], np.uint8),
        ("UINT16", "uint_contents", [0, 1, 2, 65535], np.uint16),
        ("UINT32", "uint_contents", [0, 1, 2, (1 << 32) - 1], np.uint32),
        ("UINT64", "uint64_contents", [0, 1, 2, (1 << 64) - 1], np.uint64),
        ("FP64", "fp64_contents", [0.25, -1.5, 3.0, 1e300], np.float64),
    ],
)
def test_typed_contents_of_each_type(raw_channel, datatype, field, values, dtype):
    request = oip.ModelInferRequest(model_name="echo.echo")
    x = request.inputs.add(name="x", datatype=datatype, shape=[2, 2])
    getattr(x.contents, field).extend(values)
    reply = raw_infer(raw_channel, request)
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [("y", datatype, [2, 2])]
    np.testing.assert_array_equal(np.frombuffer(reply.raw_output_contents[0], dtype), np.array(values, dtype))


def test_typed_contents_bytes(raw_channel):
    request = oip.ModelInferRequest(model_name="echo.echo")
    request.inputs.add(name="x", datatype="BYTES", shape=[3]).contents.bytes_contents.extend([b"a", b"", b"xyz"])
    reply = raw_infer(raw_channel, request)
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [("y", "BYTES", [3])]
    assert reply.raw_output_contents[0] == bytes_tensor(b"a", b"", b"xyz")


def _contents_request(datatype: str, shape: list, field: str, values: list) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="echo.echo")
    x = request.inputs.add(name="x", datatype=datatype, shape=shape)
    getattr(x.contents, field).extend(values)
    return request


@pytest.mark.parametrize(
    "request_, detail",
    [
        (_contents_request("INT8", [2], "int_contents", [1, 128]), "input contents value out of the range of INT8"),
        (_contents_request("UINT16", [1], "uint_contents", [65536]), "input contents value out of the range of UINT16"),
        (
            _contents_request("FP16", [1], "fp32_contents", [1.0]),
            "FP16 input data can only be given in raw_input_contents",
        ),
        (
            _contents_request("FP32", [2], "int_contents", [1, 2]),
            "FP32 input data belongs in contents.fp32_contents, not contents.int_contents",
        ),
        (
            _contents_request("FP32", [1, 2, 2], "fp32_contents", [1.0, 2.0, 3.0]),
            "input contents count 3 invalid, shape [1, 2, 2] needs 4 elements",
        ),
        (
            _contents_request("BYTES", [2], "bytes_contents", [b"a"]),
            "input contents count 1 invalid, shape [2] needs 2 elements",
        ),
        (
            oip.ModelInferRequest(model_name="echo.echo", inputs=[{"name": "x", "datatype": "INT32", "shape": [3]}]),
            "input contents count 0 invalid, shape [3] needs 3 elements",
        ),
    ],
)
def test_typed_contents_errors(raw_channel, triton, request_, detail):
    error = raw_infer_error(raw_channel, request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"Instances input x check failed, detail: Tensor check failed: {detail}"
    assert_add_still_serves("oip_grpc", triton)


def test_raw_and_typed_contents_together_are_refused(raw_channel):
    request = good_add_request()
    request.inputs[0].contents.fp32_contents.extend([1.0] * 4)
    error = raw_infer_error(raw_channel, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "Input x1 has contents while the request uses raw_input_contents: give all inputs one way"
    )


def test_messages_are_wire_compatible_with_tritonclients_own():
    """mindserve's OIP messages live in a pool of their own, beside tritonclient's, with the same wire format."""
    request = good_add_request()
    request.id = "same"
    theirs = service_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.model_name == "add.add_common" and theirs.id == "same"
    assert [(t.name, t.datatype, list(t.shape)) for t in theirs.inputs] == [
        ("x1", "FP32", [1, 2, 2]),
        ("x2", "FP32", [1, 2, 2]),
    ]
    assert list(theirs.raw_input_contents) == list(request.raw_input_contents)
    assert oip.ModelInferRequest.FromString(theirs.SerializeToString()) == request


# ---- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, version, status, message",
    [
        ("nope", "", "NOT_FOUND", f"Model 'nope' is not found, {NOT_FOUND_HINT}"),
        ("add.nope", "", "NOT_FOUND", ADD_NOPE.format(hint=NOT_FOUND_HINT)),
        ("", "", "NOT_FOUND", f"Model '' is not found, {NOT_FOUND_HINT}"),
        (
            "add",
            "",
            "NOT_FOUND",
            "Model 'add' is not found: servable add has 2 methods, name one as 'add.<method>' (add_cast, add_common)",
        ),
        ("add.add_common", "7", "NOT_FOUND", "Model 'add.add_common' version 7 is not found, running versions: 1"),
        ("add.add_common", "one", "INVALID_ARGUMENT", "Model 'add.add_common' version 'one' is not a version number"),
        (
            "add.add_common",
            "1" * 30,
            "INVALID_ARGUMENT",
            f"Model 'add.add_common' version '{'1' * 30}' is not a version number",
        ),
    ],
)
def test_unknown_model_or_version(triton, model, version, status, message):
    x = np.ones((1, 2, 2), np.float32)
    assert_infer_error(triton, model, add_inputs(x, x), status, message, model_version=version)
    assert_add_still_serves("oip_grpc", triton)


def test_missing_unexpected_and_repeated_inputs(triton):
    x = np.ones((1, 2, 2), np.float32)
    assert_infer_error(
        triton,
        "add.add_common",
        [infer_input("x1", x, "FP32")],
        "INVALID_ARGUMENT",
        "Cannot find input x2 in request inputs , servable add, method add_common: the method takes "
        "x1, x2; the request gives x1",
    )
    assert_infer_error(
        triton,
        "add.add_common",
        add_inputs(x, x) + [infer_input("x3", x, "FP32")],
        "INVALID_ARGUMENT",
        "Unexpected input x3 in request inputs , servable add, method add_common takes x1, x2",
    )
    assert_infer_error(
        triton,
        "add.add_common",
        add_inputs(x, x) + [infer_input("x1", x, "FP32")],
        "INVALID_ARGUMENT",
        "Input x1 is given more than once",
    )
    assert_add_still_serves("oip_grpc", triton)


def test_wrong_dtype_and_size_answer_with_msservice_texts(triton):
    x = np.ones((2, 2, 2), np.float32)
    assert_infer_error(
        triton,
        "add.add_common",
        [infer_input("x1", x, "FP32"), infer_input("x2", x.astype(np.int32), "INT32")],
        "INVALID_ARGUMENT",
        "Given model input 1 data type kMSI_Int32 not match the data type "
        "kMSI_Float32 defined in model: input 'x2' of model tensor_add.onnx "
        "takes float32 [2, 2], given int32 [2, 2]",
    )
    big = np.ones((2, 3, 2), np.float32)
    assert_infer_error(
        triton,
        "add.add_common",
        add_inputs(big, big),
        "INVALID_ARGUMENT",
        "Given model input 0 size 24 not match the size 16 defined in model: input 'x1' of model "
        "tensor_add.onnx takes float32 [2, 2], given float32 [3, 2]",
    )
    assert_add_still_serves("oip_grpc", triton)


def test_instances_must_agree_on_dim_0(triton):
    assert_infer_error(
        triton,
        "add.add_common",
        [
            infer_input("x1", np.ones((2, 2, 2), np.float32), "FP32"),
            infer_input("x2", np.ones((3, 2, 2), np.float32), "FP32"),
        ],
        "INVALID_ARGUMENT",
        "Instances input x2 check failed, detail: Tensor check failed: input dim 0 "
        "(instances) is 3, but input x1 has 2",
    )
    x = np.ones((0, 2, 2), np.float32)
    assert_infer_error(
        triton,
        "add.add_common",
        add_inputs(x, x),
        "INVALID_ARGUMENT",
        "Instances count of request cannot be 0, servable: add, method: add_common",
    )
    assert_add_still_serves("oip_grpc", triton)


def test_failing_instance_fails_the_call_with_the_first_error(triton):
    x = np.array([1, -2, -3, 4], np.int64)
    assert_infer_error(
        triton,
        "probe.positive",
        [infer_input("x", x, "INT64")],
        "INTERNAL",
        "Call Function 'probe.fail_negative' Failed, method: 'positive', stage index(begin with 1): 1, "
        "error msg: negative value -2",
    )
    y = triton.infer("probe.positive", [infer_input("x", np.array([1, 2], np.int64), "INT64")]).as_numpy("y")
    np.testing.assert_array_equal(y, np.array([1, 2], np.int64))
    assert_infer_error(
        triton,
        "echo.raise_error",
        [infer_input("x", np.array([[1.5, 2.0]], np.float32), "FP32")],
        "INTERNAL",
        "Call Function 'echo.fail' Failed, method: 'raise_error', stage index(begin with "
        "1): 1, error msg: bad value [1.5 2. ]",
    )


def test_outputs_that_cannot_stack(triton):
    assert_infer_error(
        triton,
        "probe.zeros_of_length",
        [infer_input("x", np.array([1, 2], np.int64), "INT64")],
        "INTERNAL",
        "Output y of instance 1 is FP32 of shape [2] but that of instance 0 is FP32 of "
        "shape [1]: the instances' outputs are stacked along dim 0 and must agree in data "
        "type and shape",
    )
    assert_add_still_serves("oip_grpc", triton)


def _x1(datatype: str, shape: list, data: bytes) -> oip.ModelInferRequest:
    return request_for("add.add_common", ("x1", datatype, shape, data), ("x2", "FP32", [1, 2, 2], fp32((1, 2, 2))))


HUGE = 1 << 62

MALFORMED_RAW = {
    "data_size": (
        _x1("FP32", [1, 2, 2], fp32((3,))),
        "x1",
        "Tensor check failed: input data size 12 invalid, shape [1, 2, 2] of kMSI_Float32 needs 16 bytes",
    ),
    "huge_shape": (
        request_for(
            "add.add_common", ("x1", "FP32", [1, HUGE, HUGE], fp32((4,))), ("x2", "FP32", [1, HUGE, HUGE], fp32((4,)))
        ),
        "x1",
        f"Tensor check failed: input data size 16 invalid, shape [1, {HUGE}, {HUGE}] of "
        f"kMSI_Float32 needs {HUGE * HUGE * 4} bytes",
    ),
    "negative_dim": (_x1("FP32", [-1, 2, 2], fp32((4,))), "x1", "Tensor check failed: input shape [-1, 2, 2] invalid"),
    "no_dims": (_x1("FP32", [], fp32(())), "x1", "Tensor check failed: input shape [] invalid, dim 0 is the instances"),
    "unknown_datatype": (
        _x1("FP8", [1, 2, 2], fp32((1, 2, 2))),
        "x1",
        "Tensor check failed: input data type FP8 invalid: " + OIP_TYPES,
    ),
    "empty_datatype": (
        _x1("", [1, 2, 2], fp32((1, 2, 2))),
        "x1",
        "Tensor check failed: input data type (empty) invalid: " + OIP_TYPES,
    ),
    "bytes_shape": (
        request_for("echo.echo", ("x", "BYTES", [2, 2], bytes_tensor(b"a", b"b", b"c", b"d"))),
        "x",
        "Tensor check failed: BYTES input shape can only be [N] or [N, 1], one element per "
        "instance, but given shape is [2, 2]",
    ),
    "bytes_short_length": (
        request_for("echo.echo", ("x", "BYTES", [2], bytes_tensor(b"a") + b"\x02\x00")),
        "x",
        "Tensor check failed: BYTES input data is malformed, element 1 has 2 of its 4 length bytes",
    ),
    "bytes_long_element": (
        request_for("echo.echo", ("x", "BYTES", [1], b"\x05\x00\x00\x00ab")),
        "x",
        "Tensor check failed: BYTES input data is malformed, element 0 declares 5 bytes, 2 are left",
    ),
    "bytes_huge_length": (
        request_for("echo.echo", ("x", "BYTES", [1], b"\xff\xff\xff\xff")),
        "x",
        "Tensor check failed: BYTES input data is malformed, element 0 declares 4294967295 bytes, 0 are left",
    ),
    "bytes_too_few": (
        request_for("echo.echo", ("x", "BYTES", [2], bytes_tensor(b"a"))),
        "x",
        "Tensor check failed: BYTES input data holds 1 elements, shape [2] needs 2",
    ),
    "bytes_too_many": (
        request_for("echo.echo", ("x", "BYTES", [2], bytes_tensor(b"a", b"b", b"c"))),
        "x",
        "Tensor check failed: BYTES input data holds more than 2 elements, shape [2] needs 2",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_RAW))
def test_malformed_raw_tensor(raw_channel, triton, case):
    request, name, detail = MALFORMED_RAW[case]
    error = raw_infer_error(raw_channel, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"Instances input {name} check failed, detail: {detail}"
    assert_add_still_serves("oip_grpc", triton)


@pytest.mark.parametrize("count", [HUGE, 10001])
def test_instance_count_is_bounded(raw_channel, triton, count):
    """Instances of empty tensors cost no request bytes: their number is refused before anything is made."""
    request = request_for("echo.echo", ("x", "FP32", [count, 0], b""))
    error = raw_infer_error(raw_channel, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"Instances count {count} of request exceeds the limit 10000, servable: echo, method: echo"
    )
    assert_add_still_serves("oip_grpc", triton)


def test_raw_input_contents_must_have_one_entry_per_input(raw_channel, triton):
    request = good_add_request()
    del request.raw_input_contents[1]
    error = raw_infer_error(raw_channel, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "raw_input_contents holds 1 entries for 2 inputs: it needs one per input, in the order of inputs"
    )
    assert_add_still_serves("oip_grpc", triton)


def test_shared_memory_is_refused_unless_the_server_allows_it(raw_channel, triton):
    disabled = (
        "client shared memory is disabled: start the server with allow_client_shm=True to use it "
        "(allow_client_shm: true in serving.yaml, or MINDSERVE_ALLOW_CLIENT_SHM=true)"
    )
    request = good_add_request()
    request.inputs[0].parameters["shared_memory_region"].string_param = "region"
    error = raw_infer_error(raw_channel, request)
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, disabled)
    request = good_add_request()
    request.outputs.add(name="y").parameters["shared_memory_region"].string_param = "region"
    error = raw_infer_error(raw_channel, request)
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, disabled)
    assert_add_still_serves("oip_grpc", triton)


def test_good_raw_request(raw_channel):
    reply = raw_infer(raw_channel, good_add_request())
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [("y", "FP32", [1, 2, 2])]
    np.testing.assert_array_equal(np.frombuffer(reply.raw_output_contents[0], np.float32), np.full(4, 3.5, np.float32))


@pytest.mark.parametrize(
    "data, details",
    [
        (b"\xff\xff\xff", None),
        (good_add_request().SerializeToString()[:-5], None),
        (
            good_add_request().SerializeToString() + b"\x48\x01",
            "the request is not a valid ModelInferRequest message: ModelInferRequest: field number 9 (wire type 0) "
            "has an "
            "unknown number or a wrong wire type",
        ),
        # inputs[0].datatype (field 2, a string) sent as a varint
        (
            good_add_request().SerializeToString() + b"\x2a\x02\x10\x01",
            "the request is not a valid ModelInferRequest message: inputs[2]: field number 2 (wire type 0) has an "
            "unknown "
            "number or a wrong wire type",
        ),
    ],
)
def test_malformed_messages_are_invalid_argument(raw_channel, triton, data, details):
    error = raw_infer_error(raw_channel, data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    if details is None:
        assert error.details().startswith("the request is not a valid ModelInferRequest message: "), error.details()
    else:
        assert error.details() == details
    assert "Traceback" not in error.details()
    assert_add_still_serves("oip_grpc", triton)


@pytest.mark.parametrize("rpc", ["ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata"])
def test_malformed_state_requests_are_invalid_argument(raw_channel, rpc):
    with pytest.raises(grpc.RpcError) as info:
        raw_channel.unary_unary(f"/inference.GRPCInferenceService/{rpc}")(b"\x48\x01", timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    kind = {
        "ServerLive": "ServerLiveRequest",
        "ServerReady": "ServerReadyRequest",
        "ServerMetadata": "ServerMetadataRequest",
        "ModelReady": "ModelReadyRequest",
        "ModelMetadata": "ModelMetadataRequest",
    }[rpc]
    assert info.value.details() == (
        f"the request is not a valid {kind} message: {kind}: field number 9 (wire type 0) "
        f"has an unknown number or a wrong wire type"
    )


@pytest.mark.parametrize(
    "error, status",
    [
        (InvalidInput("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotServed("no such model"), grpc.StatusCode.NOT_FOUND),
        (NotServed("no such method", INVALID_INPUTS), grpc.StatusCode.NOT_FOUND),
        (NoLiveWorker("down"), grpc.StatusCode.UNAVAILABLE),
        (QueueFull("full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (StageFailed("stage failed"), grpc.StatusCode.INTERNAL),
        (WorkerLost("gone"), grpc.StatusCode.UNAVAILABLE),
        (Internal("defect"), grpc.StatusCode.INTERNAL),
        # untyped errors (what a worker's reply carries) by their code
        (ServingError(INVALID_INPUTS, "bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (ServingError(WORKER_UNAVAILABLE, "gone"), grpc.StatusCode.UNAVAILABLE),
        (ServingError(SERVABLE_UNAVAILABLE, "gone"), grpc.StatusCode.UNAVAILABLE),
        (ServingError(SYSTEM_ERROR, "stage failed"), grpc.StatusCode.INTERNAL),
        (ServingError(FAILED, "model failed"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_of_serving_errors(error, status):
    """Typed errors by their type, whatever their MSService code; untyped ones by their code."""
    assert status_of(error) == status


# ---- TLS --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_oip_server(tls_files, tmp_path_factory) -> Iterator[ServerProcess]:
    """The bundled add servable behind one-way TLS and mutual TLS listeners."""
    tmp = tmp_path_factory.mktemp("tls_oip_server")
    addresses = {"tls": f"127.0.0.1:{free_port()}", "mtls": f"127.0.0.1:{free_port()}"}
    server = start_tls_server(tmp, tls_files, "start_grpc_server", addresses, mutual={"mtls"})
    yield server
    server.stop()


def _add_once(client) -> None:
    x1 = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
    np.testing.assert_array_equal(client.infer("add.add_common", add_inputs(x1, x1)).as_numpy("y"), x1 * 2)


def test_tls(tls_oip_server, tls_files):
    with tg.InferenceServerClient(
        tls_oip_server.addresses["tls"], ssl=True, root_certificates=tls_files["ca.pem"]
    ) as client:
        assert client.is_server_ready()
        _add_once(client)


def test_mutual_tls(tls_oip_server, tls_files):
    f = tls_files
    with tg.InferenceServerClient(
        tls_oip_server.addresses["mtls"],
        ssl=True,
        root_certificates=f["ca.pem"],
        private_key=f["client.key"],
        certificate_chain=f["client.pem"],
    ) as client:
        assert client.is_server_ready()
        _add_once(client)


@pytest.mark.parametrize(
    "listener, kwargs",
    [
        ("mtls", {"ssl": True}),  # no client certificate
        ("tls", {}),  # plaintext on a TLS port
        ("tls", {"ssl": True, "root_certificates": "other_ca.pem"}),  # the server's CA is not trusted
    ],
)
def test_tls_refusals(tls_oip_server, tls_files, listener, kwargs):
    kwargs = dict(kwargs)
    if kwargs.get("ssl"):
        kwargs["root_certificates"] = tls_files[kwargs.get("root_certificates", "ca.pem")]
    with tg.InferenceServerClient(tls_oip_server.addresses[listener], **kwargs) as client:
        with pytest.raises(InferenceServerException) as info:
            client.is_server_live(client_timeout=30)
        assert info.value.status() == "StatusCode.UNAVAILABLE"


# ---- readiness follows the workers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hold_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """hold (one method; while the hold file exists a restarted worker stays down) and probe, one worker each,
    with at most one request waiting at a time."""
    tmp = tmp_path_factory.mktemp("oip_hold_server")
    root = servables.make_probe_and_hold(str(tmp_path_factory.mktemp("hold_servables")))
    address = f"127.0.0.1:{free_port()}"
    hold_file = str(tmp / "hold")
    server = start_server(
        tmp,
        f"""
        import os
        from mindserve.server import context
        os.environ["MINDSERVE_TEST_HOLD_FILE"] = {hold_file!r}
        context.set_max_enqueued_requests(1)
        context.set_worker_restart_wait(0.2)  # requests during the held restart are refused soon
        server.start_servables([server.ServableStartConfig({root!r}, "hold", device_ids=0),
                                server.ServableStartConfig({root!r}, "probe", device_ids=0)])
        server.start_grpc_server({address!r})
    """,
        address,
    )
    server.hold_file = hold_file
    server.block_file = str(tmp / "block")
    yield server
    for path in (hold_file, server.block_file, server.block_file + ".started"):
        if os.path.exists(path):
            os.unlink(path)
    server.stop()


def test_readiness_follows_worker_liveness(hold_server):
    x = np.array([b"ping"], dtype=np.object_)
    with tg.InferenceServerClient(hold_server.address) as client:
        assert client.is_server_ready() and client.is_model_ready("hold") and client.is_model_ready("hold.echo")
        (old,) = worker_pids(hold_server, "hold")
        open(hold_server.hold_file, "w").close()
        try:
            os.kill(old, signal.SIGKILL)
            wait_until(lambda: not client.is_server_ready(), "ServerReady to turn false")
            assert client.is_server_live() is True
            assert client.is_model_ready("hold") is False
            assert client.is_model_ready("hold.echo", "0") is False
            for name in ("hold", "hold.echo"):
                assert_infer_error(
                    client,
                    name,
                    [infer_input("x", x, "BYTES")],
                    "UNAVAILABLE",
                    "Request servable(hold) method(echo) , servable is not available",
                )
            # what the server knows of the model does not depend on a live worker
            assert _tensors(client.get_model_metadata("hold").inputs) == [("x", "", [-1])]
        finally:
            os.unlink(hold_server.hold_file)
        wait_until(client.is_server_ready, "ServerReady to turn true again")
        assert client.is_model_ready("hold") is True
        assert worker_pids(hold_server, "hold") != [old]
        assert list(client.infer("hold", [infer_input("x", x, "BYTES")]).as_numpy("y")) == [b"ping"]


def test_full_queue_is_resource_exhausted(hold_server):
    """With max_enqueued_requests=1, a request that waits in a stage keeps the queue full: the next one is refused
    at once with RESOURCE_EXHAUSTED, and served again once the first is answered."""
    x = np.array([b"ping"], dtype=np.object_)
    block_file = hold_server.block_file
    path = np.array([block_file.encode()], dtype=np.object_)
    answers: queue.Queue = queue.Queue()
    with tg.InferenceServerClient(hold_server.address) as client:
        open(block_file, "w").close()
        try:
            client.async_infer(
                "probe.wait_for_file",
                [infer_input("path", path, "BYTES")],
                callback=lambda result, error: answers.put((result, error)),
            )
            # the stage marks its start: from then on the waiting request fills the queue
            wait_until(
                lambda: os.path.exists(block_file + ".started") or not answers.empty(),
                "the waiting request to reach its stage",
            )
            assert answers.empty(), answers.get()
            assert_infer_error(
                client,
                "hold",
                [infer_input("x", x, "BYTES")],
                "RESOURCE_EXHAUSTED",
                "Serving Error: enqueued requests count exceeds the limit 1",
            )
            assert_infer_error(
                client,
                "probe.value_kind",
                [infer_input("x", x, "BYTES")],
                "RESOURCE_EXHAUSTED",
                "Serving Error: enqueued requests count exceeds the limit 1",
            )
        finally:
            os.unlink(block_file)
        result, error = answers.get(timeout=120)
        assert error is None
        assert list(result.as_numpy("path")) == [block_file.encode()]
        assert list(client.infer("hold", [infer_input("x", x, "BYTES")]).as_numpy("y")) == [b"ping"]
