"""The Open Inference Protocol's REST form (KServe v2) driven by the real ``tritonclient.http``: health, metadata,
inference with binary and JSON tensor data, versions, output selection, compression; every malformed request
answered with its status and text (plain HTTP requests); unix sockets; readiness while a servable has no live
worker, a full queue, the size limit, draining at stop, and the argument checks of start_restful_server."""

from __future__ import annotations

import base64
import json
import os
import queue
import select
import signal
import socket
import sys
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from mindserve import server as mindserve_server
from mindserve._config import SSLConfig
from support import servables
from support.checks import assert_add_still_serves
from support.paths import BUNDLED_SERVABLES
from support.processes import ServerProcess, free_port, start_server, wait_until, worker_pids
from support.rest import request, unix_request

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

NOT_FOUND_HINT = "models are named 'servable.method', or 'servable' for a servable with a single method"
HUGE = 1 << 62


@pytest.fixture(scope="module")
def rest_server(servable_dir, tmp_path_factory) -> Iterator[ServerProcess]:
    """add (bundled), echo, versioned (versions 1 and 2) and probe, one worker each, served over REST on TCP, on a
    second TCP port with max_msg_mb_size=1 and on a unix socket; a second server on the first port must fail."""
    tmp = tmp_path_factory.mktemp("rest_server")
    extra = servables.make_probe_and_hold(str(tmp_path_factory.mktemp("rest_servables")))
    address = f"127.0.0.1:{free_port()}"
    small = f"127.0.0.1:{free_port()}"
    unix_path = f"{tmp}/rest.sock"
    server = start_server(
        tmp,
        f"""
        d = {servable_dir!r}
        server.start_servables([
            server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0),
            server.ServableStartConfig(d, "echo", device_ids=0),
            server.ServableStartConfig(d, "versioned", device_ids=0, version_number=1),
            server.ServableStartConfig(d, "versioned", device_ids=0, version_number=2),
            server.ServableStartConfig({extra!r}, "probe", device_ids=0)])
        server.start_restful_server({address!r})
        server.start_restful_server({small!r}, max_msg_mb_size=1)
        server.start_restful_server("unix:{unix_path}")
        try:
            server.start_restful_server({address!r})
        except RuntimeError as exc:
            print("SECOND SERVER:", exc, flush=True)
    """,
        address,
        timeout=180,
    )
    server.small = small
    server.unix_path = unix_path
    yield server
    server.stop()


@pytest.fixture(scope="module")
def triton(rest_server):
    client = th.InferenceServerClient(rest_server.address, concurrency=2)
    yield client
    client.close()


def infer_input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> th.InferInput:
    tensor = th.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def add_inputs(x1: np.ndarray, x2: np.ndarray, binary: bool = True) -> list:
    return [infer_input("x1", x1, "FP32", binary), infer_input("x2", x2, "FP32", binary)]


def assert_error(reply, status: int, message: str) -> None:
    assert (reply.status, reply.json()) == (status, {"error": message}), reply
    assert reply.headers["Content-Type"] == "application/json"


def fp32_input(name: str, shape: list, data) -> dict:
    return {"name": name, "shape": shape, "datatype": "FP32", "data": data}


ONES = [[[1.0, 1.0], [1.0, 1.0]]]


# ---- health and metadata ----------------------------------------------------------------------------------------


def test_server_live_ready_and_metadata(triton, rest_server):
    assert triton.is_server_live() is True
    assert triton.is_server_ready() is True
    assert triton.get_server_metadata() == {
        "name": "mindserve",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "statistics"],
    }
    for path in ("/v2/health/live", "/v2/health/ready"):
        reply = request(rest_server.address, "GET", path)
        assert (reply.status, reply.body) == (200, b"")
        assert reply.headers["Server"] == "mindserve"  # not aiohttp's, which names its and Python's versions


def test_a_second_server_on_a_busy_port_fails(rest_server):
    assert f"SECOND SERVER: REST server failed to listen on {rest_server.address}: " in rest_server.output
    assert f"REST server listening on {rest_server.address}\n" in rest_server.output
    assert f"REST server listening on unix:{rest_server.unix_path}\n" in rest_server.output


@pytest.mark.parametrize(
    "name, version",
    [
        ("add.add_common", ""),
        ("add.add_cast", ""),
        ("versioned", ""),
        ("versioned", "1"),
        ("versioned.predict", "2"),
        ("echo.echo", "0"),
    ],
)
def test_model_ready(triton, name, version):
    assert triton.is_model_ready(name, version) is True


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/v2/models/nope/ready", 404, f"Model 'nope' is not found, {NOT_FOUND_HINT}"),
        (
            "/v2/models/add/ready",
            404,
            "Model 'add' is not found: servable add has 2 methods, name one as 'add.<method>' (add_cast, add_common)",
        ),
        (
            "/v2/models/versioned/versions/3/ready",
            404,
            "Model 'versioned' version 3 is not found, running versions: 1, 2",
        ),
        ("/v2/models/versioned/versions/v1/ready", 400, "Model 'versioned' version 'v1' is not a version number"),
    ],
)
def test_model_not_served_is_not_ready(triton, rest_server, path, status, message):
    assert_error(request(rest_server.address, "GET", path), status, message)
    name = path.split("/")[3]
    version = path.split("/")[5] if "/versions/" in path else ""
    assert triton.is_model_ready(name, version) is False


@pytest.mark.parametrize(
    "name, version, expected",
    [
        (
            "add.add_common",
            "",
            {
                "name": "add.add_common",
                "versions": ["1"],
                "platform": "mindserve",
                "inputs": [
                    {"name": "x1", "datatype": "FP32", "shape": [-1, 2, 2]},
                    {"name": "x2", "datatype": "FP32", "shape": [-1, 2, 2]},
                ],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2, 2]}],
            },
        ),
        (
            "add.add_cast",
            "",
            {
                "name": "add.add_cast",
                "versions": ["1"],
                "platform": "mindserve",
                "inputs": [
                    {"name": "x1", "datatype": "", "shape": [-1]},
                    {"name": "x2", "datatype": "", "shape": [-1]},
                ],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2, 2]}],
            },
        ),
        (
            "versioned",
            "1",
            {
                "name": "versioned",
                "versions": ["1", "2"],
                "platform": "mindserve",
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
            },
        ),
    ],
)
def test_model_metadata(triton, name, version, expected):
    assert triton.get_model_metadata(name, version) == expected


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/v2/models/nope", 404, f"Model 'nope' is not found, {NOT_FOUND_HINT}"),
        (
            "/v2/models/add.nope/versions/1",
            404,
            f"Model 'add.nope' is not found, {NOT_FOUND_HINT}: servable add has methods add_cast, add_common",
        ),
        ("/v2/models/versioned/versions/3", 404, "Model 'versioned' version 3 is not found, running versions: 1, 2"),
        ("/v2/models/versioned/versions/-1", 400, "Model 'versioned' version '-1' is not a version number"),
    ],
)
def test_model_metadata_errors(rest_server, path, status, message):
    assert_error(request(rest_server.address, "GET", path), status, message)


# ---- inference --------------------------------------------------------------------------------------------------


def test_infer_binary_data(triton):
    x1 = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    x2 = np.full((3, 2, 2), 0.5, np.float32)
    result = triton.infer("add.add_common", add_inputs(x1, x2), request_id="req-7")
    y = result.as_numpy("y")
    assert y.dtype == np.float32 and y.shape == (3, 2, 2)
    np.testing.assert_array_equal(y, x1 + x2)
    assert result.get_response() == {
        "model_name": "add.add_common",
        "model_version": "1",
        "id": "req-7",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [3, 2, 2], "parameters": {"binary_data_size": 48}}],
    }


def test_infer_json_data(triton):
    x1 = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    x2 = np.ones((2, 2, 2), np.float32)
    result = triton.infer(
        "add.add_common", add_inputs(x1, x2, binary=False), outputs=[th.InferRequestedOutput("y", binary_data=False)]
    )
    assert result.get_response() == {
        "model_name": "add.add_common",
        "model_version": "1",
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [2, 2, 2], "data": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]}
        ],
    }
    np.testing.assert_array_equal(result.as_numpy("y"), x1 + x2)


def test_infer_mixed_binary_and_json_inputs(triton):
    x1 = np.full((1, 2, 2), 2.0, np.float32)
    y = triton.infer(
        "add.add_common", [infer_input("x1", x1, "FP32", True), infer_input("x2", x1, "FP32", False)]
    ).as_numpy("y")
    np.testing.assert_array_equal(y, np.full((1, 2, 2), 4.0, np.float32))


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
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_echo_keeps_type_and_shape(triton, dtype, datatype, binary):
    x = (np.arange(12).reshape(2, 3, 2) % 5).astype(dtype)
    result = triton.infer(
        "echo.echo", [infer_input("x", x, datatype, binary)], outputs=[th.InferRequestedOutput("y", binary_data=binary)]
    )
    y = result.as_numpy("y")
    assert y.dtype == x.dtype and y.shape == (2, 3, 2)
    np.testing.assert_array_equal(y, x)
    assert result.get_response()["outputs"][0]["datatype"] == datatype


def test_infer_bytes(triton):
    x = np.array([b"ab", b"", b"\x00\xff\x10"], dtype=np.object_)
    result = triton.infer("echo.echo", [infer_input("x", x, "BYTES")])
    assert list(result.as_numpy("y")) == [b"ab", b"", b"\x00\xff\x10"]
    assert result.get_response()["outputs"][0]["shape"] == [3]
    # JSON BYTES data are strings; they reach Python stages as bytes unless marked as text
    x = np.array([["héllo"], ["wörld"]], dtype=np.object_)
    result = triton.infer(
        "echo.echo",
        [infer_input("x", x, "BYTES", binary=False)],
        outputs=[th.InferRequestedOutput("y", binary_data=False)],
    )
    assert result.get_response()["outputs"] == [
        {"name": "y", "datatype": "BYTES", "shape": [2], "data": ["héllo", "wörld"]}
    ]
    kinds = triton.infer("probe.value_kind", [infer_input("x", x, "BYTES", binary=False)]).as_numpy("kind")
    assert list(kinds) == [b"bytes", b"bytes"]


def test_content_type_str_gives_python_stages_str(rest_server):
    body = {
        "inputs": [
            {"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a", "é"], "parameters": {"content_type": "str"}}
        ]
    }
    reply = request(rest_server.address, "POST", "/v2/models/probe.value_kind/infer", body)
    assert reply.status == 200
    assert reply.json()["outputs"] == [{"name": "kind", "datatype": "BYTES", "shape": [2], "data": ["str", "str"]}]


def test_outputs_selection_and_versions(triton, rest_server):
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    for version, offset, answered in (("", 2.0, "2"), ("1", 1.0, "1"), ("2", 2.0, "2")):
        result = triton.infer("versioned", [infer_input("x", x, "FP32")], model_version=version)
        np.testing.assert_array_equal(result.as_numpy("y"), x + offset)
        assert result.get_response()["model_version"] == answered
    body = {
        "inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [3]}],
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
    }
    reply = request(rest_server.address, "POST", "/v2/models/probe.positive/infer", body)
    assert reply.json()["outputs"] == [{"name": "y", "datatype": "INT64", "shape": [1], "data": [3]}]
    body["outputs"] = [{"name": "z"}]
    assert_error(
        request(rest_server.address, "POST", "/v2/models/probe.positive/infer", body),
        400,
        "Cannot find output z in the outputs of servable probe, method positive: y",
    )
    body["outputs"] = [{"name": "y", "parameters": {"classification": 2}}]
    assert_error(
        request(rest_server.address, "POST", "/v2/models/probe.positive/infer", body),
        400,
        "Output y: the classification extension is not supported",
    )


def test_async_infer_and_compression(triton):
    x1 = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    x2 = np.ones((2, 2, 2), np.float32)
    pending = [triton.async_infer("add.add_common", add_inputs(x1, x2), request_id=str(k)) for k in range(4)]
    for k, call in enumerate(pending):
        result = call.get_result(timeout=60)
        np.testing.assert_array_equal(result.as_numpy("y"), x1 + x2)
        assert result.get_response()["id"] == str(k)
    for algorithm in ("gzip", "deflate"):
        result = triton.infer("add.add_common", add_inputs(x1, x2), request_compression_algorithm=algorithm)
        np.testing.assert_array_equal(result.as_numpy("y"), x1 + x2)


# ---- errors -----------------------------------------------------------------------------------------------------


def _binary_body(document: dict, *chunks: bytes) -> tuple[bytes, dict]:
    header = json.dumps(document).encode()
    return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}


def _x1(datatype: str, shape: list, data) -> dict:
    return {
        "inputs": [
            {"name": "x1", "shape": shape, "datatype": datatype, "data": data},
            fp32_input("x2", [1, 2, 2], ONES),
        ]
    }


BAD_INPUT = "Instances input {} check failed, detail: {}"

MALFORMED = {
    "not_json": (b'{"inputs": [', {}, 400, "The request body is not valid JSON: Expecting value at line 1 column 13"),
    "not_utf8": (b"\xff\xfe\x00", {}, 400, "The request body is not valid JSON: it is not UTF-8 text"),
    "empty": (b"", {}, 400, "The request body is not valid JSON: Expecting value at line 1 column 1"),
    "nested_too_deeply": (
        b"[" * 200000 + b"]" * 200000,
        {},
        400,
        "The request body is not valid JSON: it is nested too deeply",
    ),
    "not_an_object": ([1, 2], {}, 400, "The inference request should be a JSON object"),
    "unknown_key": (
        {"inputs": [], "model": "x"},
        {},
        400,
        "The inference request has the unknown key 'model': it takes id, parameters, inputs, outputs",
    ),
    "no_inputs": ({"id": "x"}, {}, 400, "The inference request should have inputs, a JSON array of tensors"),
    "id_not_a_string": ({"id": 7, "inputs": []}, {}, 400, "The id of the inference request should be a JSON string"),
    "input_not_an_object": ({"inputs": [3]}, {}, 400, "Input 0 of the inference request should be a JSON object"),
    "input_without_name": (
        {"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]},
        {},
        400,
        "Input 0 of the inference request should have a name, a JSON string",
    ),
    "input_without_data": (
        {"inputs": [{"name": "x1", "shape": [1], "datatype": "FP32"}]},
        {},
        400,
        "Input x1 has neither data nor parameters.binary_data_size",
    ),
    "shape_not_a_list": (
        _x1("FP32", "1,2,2", ONES),  # type: ignore[arg-type]  # a str shape, on purpose
        {},
        400,
        BAD_INPUT.format("x1", "Tensor check failed: input shape '1,2,2' invalid, it should be a list of integers"),
    ),
    "shape_too_large": (
        _x1("FP32", [1, 1 << 63, 2], ONES),
        {},
        400,
        BAD_INPUT.format("x1", f"Tensor check failed: input shape [1, {1 << 63}, 2] invalid"),
    ),
    "negative_dim": (
        _x1("FP32", [-1, 2, 2], ONES),
        {},
        400,
        BAD_INPUT.format("x1", "Tensor check failed: input shape [-1, 2, 2] invalid"),
    ),
    "ragged": (
        _x1("FP32", [1, 2, 2], [[[1.0, 1.0], [1.0]]]),
        {},
        400,
        BAD_INPUT.format(
            "x1", "Tensor check failed: the JSON array is ragged, its rows at depth 2 differ in length or nesting"
        ),
    ),
    "nested_as_another_shape": (
        _x1("FP32", [1, 2, 2], [[1.0, 1.0, 1.0, 1.0]]),
        {},
        400,
        BAD_INPUT.format(
            "x1", "Tensor check failed: input data is nested as shape [1, 4], but the input's shape is [1, 2, 2]"
        ),
    ),
    "too_few_elements": (
        _x1("FP32", [1, 2, 2], [1.0, 2.0, 3.0]),
        {},
        400,
        BAD_INPUT.format("x1", "Tensor check failed: input data holds 3 elements, shape [1, 2, 2] needs 4"),
    ),
    "strings_as_numbers": (
        _x1("FP32", [1, 2, 2], [1.0, "2", 3.0, None]),
        {},
        400,
        BAD_INPUT.format(
            "x1", "Tensor check failed: FP32 input data should be JSON numbers, but it holds nulls and strings"
        ),
    ),
    "unknown_datatype": (
        _x1("FP8", [1, 2, 2], ONES),
        {},
        400,
        BAD_INPUT.format(
            "x1",
            "Tensor check failed: input data type FP8 invalid: the data "
            "types are BOOL, INT8, UINT8, INT16, UINT16, INT32, "
            "UINT32, INT64, UINT64, FP16, FP32, FP64, BYTES",
        ),
    ),
    "float_out_of_range": (
        _x1("FP32", [1, 2, 2], [1.0, 1e39, 1.0, 1.0]),
        {},
        400,
        BAD_INPUT.format("x1", "Tensor check failed: input value 1e+39 is out of the range of FP32"),
    ),
    "wrong_dtype": (
        _x1("INT32", [1, 2, 2], [1, 2, 3, 4]),
        {},
        400,
        "Given model input 0 data type kMSI_Int32 not match the data type kMSI_Float32 defined in model: "
        "input 'x1' of model tensor_add.onnx takes float32 [2, 2], given int32 [2, 2]",
    ),
    "missing_input": (
        {"inputs": [fp32_input("x1", [1, 2, 2], ONES)]},
        {},
        400,
        "Cannot find input x2 in request inputs , servable add, method add_common: the method takes "
        "x1, x2; the request gives x1",
    ),
    "repeated_input": (
        {"inputs": [fp32_input("x1", [1, 2, 2], ONES)] * 2},
        {},
        400,
        "Input x1 is given more than once",
    ),
    "shared_memory": (
        {"inputs": [{"name": "x1", "shape": [1], "datatype": "FP32", "parameters": {"shared_memory_region": "r"}}]},
        {},
        400,
        "client shared memory is disabled: start the server with allow_client_shm=True to use it "
        "(allow_client_shm: true in serving.yaml, or MINDSERVE_ALLOW_CLIENT_SHM=true)",
    ),
    "header_length_too_large": (
        b"{}",
        {"Inference-Header-Content-Length": "3"},
        400,
        "Inference-Header-Content-Length '3' invalid: it should be the byte size of the JSON "
        "at the start of the 2-byte body",
    ),
    "header_length_not_a_number": (
        b"{}",
        {"Inference-Header-Content-Length": "x"},
        400,
        "Inference-Header-Content-Length 'x' invalid: it should be the byte size of the "
        "JSON at the start of the 2-byte body",
    ),
    "binary_size_past_the_end": (
        *_binary_body(
            {
                "inputs": [
                    {"name": "x1", "shape": [1, 2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
                    fp32_input("x2", [1, 2, 2], ONES),
                ]
            },
            b"\x00" * 12,
        ),
        400,
        "Input x1 declares binary_data_size 16, but 12 bytes of binary data are left",
    ),
    "binary_left_over": (
        *_binary_body(
            {
                "inputs": [
                    {"name": "x1", "shape": [1, 2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
                    fp32_input("x2", [1, 2, 2], ONES),
                ]
            },
            b"\x00" * 20,
        ),
        400,
        "The request holds 4 bytes of binary data after its JSON that no input's binary_data_size claims",
    ),
    "binary_and_data": (
        *_binary_body(
            {
                "inputs": [
                    {
                        "name": "x1",
                        "shape": [1, 2, 2],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 16},
                        "data": ONES,
                    },
                    fp32_input("x2", [1, 2, 2], ONES),
                ]
            },
            b"\x00" * 16,
        ),
        400,
        "Input x1 has both data and parameters.binary_data_size: give one",
    ),
    # a huge declared shape is checked against the bytes received, nothing is allocated from it
    "huge_shape": (
        *_binary_body(
            {
                "inputs": [
                    {
                        "name": "x1",
                        "shape": [1, HUGE, HUGE],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 16},
                    },
                    fp32_input("x2", [1, 2, 2], ONES),
                ]
            },
            b"\x00" * 16,
        ),
        400,
        BAD_INPUT.format(
            "x1",
            f"Tensor check failed: input data size 16 invalid, shape [1, {HUGE}, {HUGE}] of "
            f"kMSI_Float32 needs {HUGE * HUGE * 4} bytes",
        ),
    ),
    "huge_json_shape": (
        _x1("FP32", [1, HUGE, HUGE], ONES),
        {},
        400,
        BAD_INPUT.format(
            "x1",
            f"Tensor check failed: input data is nested as shape [1, 2, 2], but "
            f"the input's shape is [1, {HUGE}, {HUGE}]",
        ),
    ),
    "wrong_content_type": (
        b"x1=1",
        {"Content-Type": "multipart/form-data; boundary=x"},
        415,
        "Content-Type multipart/form-data is not supported: send the request as application/json",
    ),
    "octet_stream_without_binary_header": (
        b"{}",
        {"Content-Type": "application/octet-stream"},
        415,
        "Content-Type application/octet-stream is not supported: send the request as application/json",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests(rest_server, triton, case):
    body, headers, status, message = MALFORMED[case]
    assert_error(
        request(rest_server.address, "POST", "/v2/models/add.add_common/infer", body, headers), status, message
    )
    assert_add_still_serves("oip_rest", triton)


def test_instance_count_is_bounded(rest_server):
    body = {"inputs": [{"name": "x", "shape": [10001, 0], "datatype": "FP32", "data": []}]}
    assert_error(
        request(rest_server.address, "POST", "/v2/models/echo.echo/infer", body),
        400,
        "Instances count 10001 of request exceeds the limit 10000, servable: echo, method: echo",
    )
    body["inputs"][0]["shape"] = [0, 2]
    assert_error(
        request(rest_server.address, "POST", "/v2/models/echo.echo/infer", body),
        400,
        "Instances count of request cannot be 0, servable: echo, method: echo",
    )


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/v2/models/nope/infer", 404, f"Model 'nope' is not found, {NOT_FOUND_HINT}"),
        (
            "/v2/models/add/infer",
            404,
            "Model 'add' is not found: servable add has 2 methods, name one as 'add.<method>' (add_cast, add_common)",
        ),
        (
            "/v2/models/add.add_common/versions/7/infer",
            404,
            "Model 'add.add_common' version 7 is not found, running versions: 1",
        ),
        (
            "/v2/models/add.add_common/versions/one/infer",
            400,
            "Model 'add.add_common' version 'one' is not a version number",
        ),
    ],
)
def test_unknown_model_or_version(rest_server, path, status, message):
    body = {"inputs": [fp32_input("x1", [1, 2, 2], ONES), fp32_input("x2", [1, 2, 2], ONES)]}
    assert_error(request(rest_server.address, "POST", path, body), status, message)


def test_failing_stage_is_internal_and_bytes_that_are_not_text_need_binary(rest_server, triton):
    body = {"inputs": [{"name": "x", "shape": [3], "datatype": "INT64", "data": [1, -2, -3]}]}
    assert_error(
        request(rest_server.address, "POST", "/v2/models/probe.positive/infer", body),
        500,
        "Call Function 'probe.fail_negative' Failed, method: 'positive', stage index(begin with 1): 1, error "
        "msg: negative value -2",
    )
    x = np.array([b"\xff"], dtype=np.object_)
    with pytest.raises(InferenceServerException) as info:
        triton.infer("echo.echo", [infer_input("x", x, "BYTES")], outputs=[th.InferRequestedOutput("y", False)])
    assert (info.value.status(), info.value.message()) == (
        "400",
        "Output y holds bytes that are not UTF-8 text, which "
        "JSON cannot carry: ask for it with the parameter "
        "binary_data: true",
    )


def test_unknown_endpoints_and_methods(rest_server):
    reply = request(rest_server.address, "GET", "/v3/models")
    assert reply.status == 404
    assert reply.json()["error"].startswith("No endpoint GET /v3/models; the endpoints are GET /v2/health/live, ")
    assert_error(
        request(rest_server.address, "POST", "/v2/health/ready", b""),
        405,
        "Method POST is not allowed on /v2/health/ready: use GET, HEAD",
    )
    assert_error(
        request(rest_server.address, "GET", "/v2/models/add.add_common/infer"),
        405,
        "Method GET is not allowed on /v2/models/add.add_common/infer: use POST",
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
def test_body_over_the_limit_is_413(rest_server, chunked):
    x = np.zeros((1 << 18) + 1, np.float32)  # 1 MiB + 4 bytes of binary data
    body, headers = _binary_body(
        {
            "inputs": [
                {"name": "x", "shape": [1, x.size], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
            ]
        },
        x.tobytes(),
    )
    reply = request(rest_server.small, "POST", "/v2/models/echo.echo/infer", body, headers, chunked=chunked)
    assert_error(reply, 413, "Request body is larger than the limit of 1048576 bytes (max_msg_mb_size 1)")
    # just under the limit is served
    x = np.arange(1 << 17, dtype=np.float32)
    body, headers = _binary_body(
        {
            "inputs": [
                {"name": "x", "shape": [1, x.size], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        },
        x.tobytes(),
    )
    reply = request(rest_server.small, "POST", "/v2/models/echo.echo/infer", body, headers, chunked=chunked)
    assert reply.status == 200
    size = int(reply.headers["Inference-Header-Content-Length"])
    assert json.loads(reply.body[:size])["outputs"] == [
        {"name": "y", "datatype": "FP32", "shape": [1, x.size], "parameters": {"binary_data_size": x.nbytes}}
    ]
    np.testing.assert_array_equal(np.frombuffer(reply.body[size:], np.float32), x)


def _raw_exchange(address: str, data: bytes, answer: bool = True) -> bytes:
    """Send ``data`` on a new connection; the server's answer, up to its closing the connection (each request here
    ends it), or b"" at once when ``answer`` is False (the client goes away)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(data)
        if not answer:
            return b""
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def _server_output(server: ServerProcess) -> str:
    """What the server printed so far (read without waiting)."""
    assert server.proc.stdout is not None
    while select.select([server.proc.stdout], [], [], 0)[0]:
        data = os.read(server.proc.stdout.fileno(), 65536)
        if not data:
            break
        server.output += data.decode(errors="replace")
    return server.output


def test_client_faults_are_answered_without_tracebacks(rest_server, triton):
    """A body cut short by a client that goes away, a broken chunked body, a body that claims a compression it
    does not have, a request line that is not HTTP: each is answered 400 (or needs no answer), nothing else is
    disturbed, and the server logs no traceback for them."""
    address = rest_server.address
    _raw_exchange(
        address, b'POST /model/echo:echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"inst', answer=False
    )
    reply = _raw_exchange(
        address,
        b"POST /v2/models/echo.echo/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n",
    )
    assert reply.startswith(b"HTTP/1.0 400 Bad Request\r\n")
    reply = _raw_exchange(
        address,
        b"POST /v2/models/echo.echo/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd",
    )
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1]) == {
        "error": "Request body could not be read: 400, message: Can not decode content-encoding: gzip"
    }
    assert _raw_exchange(address, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.0 400 Bad Request\r\n")
    assert_add_still_serves("oip_rest", triton)
    assert "Traceback" not in _server_output(rest_server)


# ---- unix sockets ------------------------------------------------------------------------------------------------


def test_unix_socket(rest_server):
    assert os.stat(rest_server.unix_path).st_mode & 0o777 == 0o600
    assert unix_request(rest_server.unix_path, "GET", "/v2/health/ready").status == 200
    body = {"inputs": [fp32_input("x1", [1, 2, 2], ONES), fp32_input("x2", [1, 2, 2], ONES)]}
    reply = unix_request(rest_server.unix_path, "POST", "/v2/models/add.add_common/infer", body)
    assert (reply.status, reply.json()) == (
        200,
        {
            "model_name": "add.add_common",
            "model_version": "1",
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2, 2], "data": [2.0, 2.0, 2.0, 2.0]}],
        },
    )
    reply = unix_request(
        rest_server.unix_path, "POST", "/model/add:add_common", {"instances": [{"x1": ONES[0], "x2": ONES[0]}]}
    )
    assert (reply.status, reply.json()) == (200, {"instances": [{"y": [[2.0, 2.0], [2.0, 2.0]]}]})


# ---- readiness follows the workers; a full queue ---------------------------------------------------------------


@pytest.fixture(scope="module")
def hold_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """hold (while the hold file exists a restarted worker stays down) and probe, one worker each, with at most one
    request waiting at a time, over REST only."""
    tmp = tmp_path_factory.mktemp("rest_hold_server")
    root = servables.make_probe_and_hold(str(tmp_path_factory.mktemp("rest_hold_servables")))
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
        server.start_restful_server({address!r})
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


HOLD_BODY = {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["ping"]}]}
PING_REPLY = {
    "model_name": "hold",
    "model_version": "0",
    "outputs": [{"name": "y", "datatype": "BYTES", "shape": [1], "data": ["ping"]}],
}


def test_readiness_follows_worker_liveness(hold_server):
    address = hold_server.address
    assert request(address, "GET", "/v2/health/ready").status == 200
    (old,) = worker_pids(hold_server, "hold")
    open(hold_server.hold_file, "w").close()
    try:
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: request(address, "GET", "/v2/health/ready").status == 503, "readiness to turn false")
        assert_error(
            request(address, "GET", "/v2/health/ready"),
            503,
            "Server is not ready: no live worker for servable hold version 0",
        )
        assert request(address, "GET", "/v2/health/live").status == 200
        for name, path in (("hold", "/v2/models/hold/ready"), ("hold.echo", "/v2/models/hold.echo/versions/0/ready")):
            assert_error(
                request(address, "GET", path), 503, f"Model '{name}' version 0 is not ready: it has no live worker"
            )
        assert request(address, "GET", "/v2/models/probe.positive/ready").status == 200
        assert_error(
            request(address, "POST", "/v2/models/hold/infer", HOLD_BODY),
            503,
            "Request servable(hold) method(echo) , servable is not available",
        )
        reply = request(address, "POST", "/model/hold:echo", {"instances": [{"x": "ping"}]})
        assert (reply.status, reply.json()) == (
            503,
            {"error_msg": "Request servable(hold) method(echo) , servable is not available"},
        )
        # what the server knows of the model does not depend on a live worker
        assert request(address, "GET", "/v2/models/hold").json()["inputs"] == [
            {"name": "x", "datatype": "", "shape": [-1]}
        ]
    finally:
        os.unlink(hold_server.hold_file)
    wait_until(lambda: request(address, "GET", "/v2/health/ready").status == 200, "readiness to turn true again")
    assert request(address, "GET", "/v2/models/hold/ready").status == 200
    reply = request(address, "POST", "/v2/models/hold/infer", HOLD_BODY)
    assert (reply.status, reply.json()) == (200, PING_REPLY)


def test_full_queue_is_429(hold_server):
    """With max_enqueued_requests=1, a request waiting in a stage keeps the queue full: the next one is refused at
    once with 429, over both forms, and served again once the first is answered."""
    address = hold_server.address
    block_file = hold_server.block_file
    answers: queue.Queue = queue.Queue()
    body = {"inputs": [{"name": "path", "shape": [1], "datatype": "BYTES", "data": [block_file]}]}
    open(block_file, "w").close()
    try:
        threading.Thread(
            target=lambda: answers.put(request(address, "POST", "/v2/models/probe.wait_for_file/infer", body)),
            daemon=True,
        ).start()
        wait_until(
            lambda: os.path.exists(block_file + ".started") or not answers.empty(),
            "the waiting request to reach its stage",
        )
        assert answers.empty(), answers.get()
        message = "Serving Error: enqueued requests count exceeds the limit 1"
        assert_error(request(address, "POST", "/v2/models/hold/infer", HOLD_BODY), 429, message)
        reply = request(address, "POST", "/model/hold:echo", {"instances": [{"x": "ping"}]})
        assert (reply.status, reply.json()) == (429, {"error_msg": message})
    finally:
        os.unlink(block_file)
    reply = answers.get(timeout=120)
    assert reply.status == 200
    assert reply.json()["outputs"][0]["data"] == [block_file]
    reply = request(address, "POST", "/v2/models/hold/infer", HOLD_BODY)
    assert (reply.status, reply.json()) == (200, PING_REPLY)


# ---- stop drains; argument checks ------------------------------------------------------------------------------


def test_stop_drains_requests_in_flight_and_removes_the_socket(tmp_path):
    root = servables.make_probe_and_hold(str(tmp_path / "servables"))
    address = f"127.0.0.1:{free_port()}"
    sock = tmp_path / "drain.sock"
    block_file = str(tmp_path / "block")
    server = start_server(
        tmp_path,
        f"""
        server.start_servables(server.ServableStartConfig({root!r}, "probe", device_ids=0))
        server.start_restful_server({address!r})
        server.start_restful_server("unix:{sock}")
    """,
        address,
    )
    answers: queue.Queue = queue.Queue()
    try:
        assert sock.exists()
        open(block_file, "w").close()
        body = {"instances": [{"path": {"b64": base64.b64encode(block_file.encode()).decode()}}]}
        threading.Thread(
            target=lambda: answers.put(request(address, "POST", "/model/probe:wait_for_file", body)), daemon=True
        ).start()
        wait_until(lambda: os.path.exists(block_file + ".started"), "the request to reach its stage")
        server.proc.send_signal(signal.SIGTERM)
        # the server refuses new requests (503, which clients retry elsewhere) and lets the one in flight finish;
        # its listeners stay open meanwhile, so that no client reads a refused connection as a failure
        wait_until(lambda: request(address, "GET", "/v2/health/live").status == 503, "new requests to be refused")
        assert server.proc.poll() is None and answers.empty() and sock.exists()
        os.unlink(block_file)
        reply = answers.get(timeout=60)
        code = server.proc.wait(30)
    finally:
        server.stop(signal.SIGKILL)
    expected = {"instances": [{"path": {"b64": body["instances"][0]["path"]["b64"]}}]}
    assert (reply.status, reply.json()) == (200, expected)
    assert code == 0, server.output
    assert not sock.exists()
    assert "Traceback" not in server.output, server.output


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"address": "nope"}, "the address 'nope' should be 'host:port' or 'unix:/path'"),
        (
            {"address": "unix-abstract:x"},
            "unix-abstract: addresses are not supported: they cannot be protected by file permissions; use unix:/path",
        ),
        ({"max_msg_mb_size": 0}, "Parameter 'max_msg_mb_size' should be in range [1,512]"),
        ({"max_msg_mb_size": 513}, "Parameter 'max_msg_mb_size' should be in range [1,512]"),
        ({"max_msg_mb_size": 1.5}, "Parameter 'max_msg_mb_size' should be int, but actually <class 'float'>"),
        ({"ssl_config": "cert.pem"}, "The type of ssl_config should be type of SSLConfig"),
    ],
)
def test_argument_checks(kwargs, message):
    arguments = {"address": "127.0.0.1:1500", **kwargs}
    with pytest.raises(RuntimeError) as info:
        mindserve_server.start_restful_server(**arguments)
    assert str(info.value) == message


def test_missing_aiohttp_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if it were not installed
    with pytest.raises(RuntimeError) as info:
        mindserve_server.start_restful_server("127.0.0.1:1500", ssl_config=None)
    assert str(info.value) == (
        "start_restful_server needs aiohttp, which is not installed: install mindserve[rest] "
        "(pip install 'mindserve[rest]')"
    )


def test_missing_certificate_files_are_clear_errors(tmp_path):
    from mindserve._frontends.rest.server import ssl_context

    with pytest.raises(RuntimeError) as info:
        ssl_context(SSLConfig(str(tmp_path / "none.pem"), str(tmp_path / "none.key")))
    assert str(info.value) == f"cannot read the certificate file '{tmp_path / 'none.pem'}': No such file or directory"
    (tmp_path / "bad.pem").write_text("not a certificate")
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(RuntimeError) as info:
        ssl_context(SSLConfig(str(tmp_path / "bad.pem"), str(tmp_path / "bad.key")))
    assert str(info.value).startswith(f"cannot load the certificate '{tmp_path / 'bad.pem'}' with the private key ")
