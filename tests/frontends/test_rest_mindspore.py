"""MindSpore Serving's RESTful form, ``POST /model/{servable}[/version/{n}]:{method}`` with ``{"instances": ...}``:
exact replies, the typing of JSON values (int32, float32, bool, str, b64 objects), one error per failed instance
while the others get results, and whole-request errors with their status and text."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest

from support import servables
from support.checks import assert_add_still_serves
from support.paths import BUNDLED_SERVABLES
from support.processes import ServerProcess, free_port, start_server
from support.rest import KINDS_CONFIG, request

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)


@pytest.fixture(scope="module")
def ms_server(servable_dir, tmp_path_factory) -> Iterator[ServerProcess]:
    """add (bundled), echo, versioned (versions 1 and 2), probe and kinds, one worker each, over REST (and a second
    REST server with max_msg_mb_size=1)."""
    tmp = tmp_path_factory.mktemp("ms_rest_server")
    extra = servables.make_probe_and_hold(str(tmp_path_factory.mktemp("ms_rest_servables")))
    servables.write(extra, "kinds", KINDS_CONFIG)
    address = f"127.0.0.1:{free_port()}"
    small = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp,
        f"""
        d = {servable_dir!r}
        server.start_servables([
            server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0),
            server.ServableStartConfig(d, "echo", device_ids=0),
            server.ServableStartConfig(d, "versioned", device_ids=0, version_number=1),
            server.ServableStartConfig(d, "versioned", device_ids=0, version_number=2),
            server.ServableStartConfig({extra!r}, "probe", device_ids=0),
            server.ServableStartConfig({extra!r}, "kinds", device_ids=0)])
        server.start_restful_server({address!r})
        server.start_restful_server({small!r}, max_msg_mb_size=1)
    """,
        address,
        timeout=180,
    )
    server.small = small
    yield server
    server.stop()


def post(server, path: str, body, headers=None):
    return request(server.address, "POST", path, body, headers)


def predict(server, path: str, body) -> list:
    """The instances of a reply that must succeed as a whole (status 200)."""
    reply = post(server, path, body)
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"] == "application/json"
    return reply.json()["instances"]


def assert_whole_error(reply, status: int, message: str) -> None:
    assert (reply.status, reply.json()) == (status, {"error_msg": message}), reply


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- results ----------------------------------------------------------------------------------------------------


def test_add_instances(ms_server):
    body = {
        "instances": [
            {"x1": [[1.0, 2.0], [3.0, 4.0]], "x2": [[1.0, 2.0], [3.0, 4.0]]},
            {"x1": [[0.5, 0.5], [0.5, 0.5]], "x2": [[1, 2], [3, 4.25]]},
        ]
    }
    assert predict(ms_server, "/model/add:add_common", body) == [
        {"y": [[2.0, 4.0], [6.0, 8.0]]},
        {"y": [[1.5, 2.5], [3.5, 4.75]]},
    ]
    # ints through the Python stage that casts them; the version in the path
    body = {"instances": [{"x1": [[1, 2], [3, 4]], "x2": [[10, 20], [30, 40]]}]}
    assert predict(ms_server, "/model/add/version/1:add_cast", body) == [{"y": [[11.0, 22.0], [33.0, 44.0]]}]


def test_one_instance_as_an_object(ms_server):
    body = {"instances": {"x1": [[1.0, 1.0], [1.0, 1.0]], "x2": [[2.0, 2.0], [2.0, 2.0]]}}
    assert predict(ms_server, "/model/add:add_common", body) == [{"y": [[3.0, 3.0], [3.0, 3.0]]}]


@pytest.mark.parametrize(
    "path, offset",
    [
        ("/model/versioned:predict", 2.0),
        ("/model/versioned/version/0:predict", 2.0),
        ("/model/versioned/version/1:predict", 1.0),
        ("/model/versioned/version/2:predict", 2.0),
    ],
)
def test_versions(ms_server, path, offset):
    assert predict(ms_server, path, {"instances": [{"x": [0.5, 1.0]}]}) == [{"y": [0.5 + offset, 1.0 + offset]}]


@pytest.mark.parametrize(
    "value, kind",
    [
        (1, "int32[]"),
        (-2147483648, "int32[]"),
        (1.5, "float32[]"),
        (1e3, "float32[]"),
        (True, "bool[]"),
        ([1, 2, 3], "int32[3]"),
        ([[1, 2.5], [3, 4]], "float32[2, 2]"),
        ([[True], [False]], "bool[2, 1]"),
        ("héllo", "str"),
        (["one"], "str"),
        ({"b64": b64(b"\x00\x01")}, "bytes"),
        ({"b64": b64(b"\x00\x01"), "type": "bytes", "shape": []}, "bytes"),
        ({"b64": b64("hé".encode()), "type": "str"}, "str"),
        ([{"b64": b64(b"x")}], "bytes"),
        ({"b64": "AQACAAIAAwADAAQA", "type": "int16", "shape": [3, 2]}, "int16[3, 2]"),
        ({"b64": b64(np.array([1.5], np.float16).tobytes()), "type": "fp16"}, "float16[1]"),
        ({"b64": b64(np.arange(2, dtype=np.uint64).tobytes()), "type": "uint64", "shape": [2]}, "uint64[2]"),
        ({"b64": b64(np.arange(1, dtype=np.float64).tobytes()), "type": "float64", "shape": []}, "float64[]"),
        ({"b64": "", "type": "float32", "shape": [2, 0]}, "float32[2, 0]"),
        ({"b64": b64(b"\x01"), "type": "bool"}, "bool[1]"),
    ],
)
def test_value_types(ms_server, value, kind):
    """JSON integers are int32 and other numbers float32 (as MindSpore Serving documents); b64 objects carry any
    type and shape (shape [1] when not given)."""
    assert predict(ms_server, "/model/kinds:kind", {"instances": [{"x": value}]}) == [{"kind": kind}]


@pytest.mark.parametrize(
    "value, answer",
    [
        (7, 7),
        (2.5, 2.5),
        (False, False),
        ([[1, 2], [3, 4]], [[1, 2], [3, 4]]),
        ("wörld", "wörld"),
        ({"b64": b64(b"\x00\xff")}, {"b64": b64(b"\x00\xff")}),
        # (MindSpore Serving's documentation says this example is [[1, 1], [2, 3], [3, 4]]; its bytes say otherwise)
        ({"b64": "AQACAAIAAwADAAQA", "type": "int16", "shape": [3, 2]}, [[1, 2], [2, 3], [3, 4]]),
        ({"b64": b64(np.array([0.5, -2], np.float16).tobytes()), "type": "float16", "shape": [2]}, [0.5, -2.0]),
        ({"b64": b64(np.array([[7]], np.uint8).tobytes()), "type": "uint8", "shape": [1, 1]}, [[7]]),
    ],
)
def test_reply_values(ms_server, value, answer):
    """Numbers as JSON numbers of the tensor's shape (bare for 0-d), str as strings, bytes as b64 objects."""
    assert predict(ms_server, "/model/echo:echo", {"instances": [{"x": value}]}) == [{"y": answer}]


def test_many_instances_of_stacked_outputs(ms_server):
    body = {"instances": [{"x": [float(k), 1.0]} for k in range(50)]}
    assert predict(ms_server, "/model/versioned/version/1:predict", body) == [{"y": [k + 1.0, 2.0]} for k in range(50)]


def test_curl_form_content_type(ms_server):
    """`curl -d` sends application/x-www-form-urlencoded, as MindSpore Serving's examples do: taken as JSON."""
    reply = post(
        ms_server, "/model/echo:echo", b'{"instances":[{"x":1}]}', {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert (reply.status, reply.json()) == (200, {"instances": [{"y": 1}]})


# ---- per-instance errors ----------------------------------------------------------------------------------------


def bad(name: str, detail: str) -> str:
    return f"Instances input {name} check failed, detail: {detail}"


@pytest.mark.parametrize(
    "value, message",
    [
        (
            [[1, 2], [3]],
            bad("x", "Tensor check failed: the JSON array is ragged, its rows at depth 1 differ in length or nesting"),
        ),
        (
            [[1, 2], 3],
            bad("x", "Tensor check failed: the JSON array is ragged, its rows at depth 1 differ in length or nesting"),
        ),
        (
            [1, True],
            bad(
                "x",
                "Tensor check failed: the JSON array holds booleans and integers: a tensor's elements are "
                "all booleans or all numbers",
            ),
        ),
        (
            [1, "a"],
            bad(
                "x",
                "Tensor check failed: the JSON array holds integers and strings: a tensor's elements are all "
                "booleans or all numbers",
            ),
        ),
        (["a", "b"], bad("x", "Instance tensor check failed: bytes or string type shape batch size can only be 1")),
        (
            [],
            bad(
                "x",
                'Tensor check failed: the empty JSON array of shape [0] has no data type, send it as {"b64": "", '
                '"type": ..., "shape": [0]}',
            ),
        ),
        (None, bad("x", "Tensor check failed: null is not a tensor value")),
        (
            [None],
            bad(
                "x",
                "Tensor check failed: the JSON array holds nulls: a tensor's elements are all booleans or all numbers",
            ),
        ),
        (2147483648, bad("x", "Tensor check failed: input value 2147483648 is out of the range of int32")),
        ([1.0, 3.5e38], bad("x", "Tensor check failed: input value 3.5e+38 is out of the range of float32")),
        ("\ud800", bad("x", "Instance tensor check failed: string input is not valid UTF-8")),
        ({"b64": "AQI"}, bad("x", "Tensor check failed: 'b64' is not valid base64 data: Incorrect padding")),
        ({"b64": "A?=="}, bad("x", "Tensor check failed: 'b64' is not valid base64 data: Only base64 data is allowed")),
        (
            {"b64": b64(b"\xff"), "type": "str"},
            bad("x", "Instance tensor check failed: string input is not valid UTF-8"),
        ),
        (
            {"b64": "AQACAAIAAwADAAQA", "type": "int16", "shape": [2, 2]},
            bad("x", "Tensor check failed: input data size 12 invalid, shape [2, 2] of kMSI_Int16 needs 8 bytes"),
        ),
        (
            {"b64": "AQACAAIAAwADAAQA", "type": "int16"},
            bad("x", "Tensor check failed: input data size 12 invalid, shape [1] of kMSI_Int16 needs 2 bytes"),
        ),
        # a huge declared shape is compared with the bytes received; nothing is allocated from it
        (
            {"b64": "AAAAAA==", "type": "float32", "shape": [1 << 62, 1 << 62]},
            bad(
                "x",
                f"Tensor check failed: input data size 4 invalid, shape [{1 << 62}, {1 << 62}] of kMSI_Float32 needs "
                f"{(1 << 124) * 4} bytes",
            ),
        ),
        (
            {"b64": "AAAAAA==", "type": "float32", "shape": [1 << 63]},
            bad("x", f"Tensor check failed: input shape [{1 << 63}] invalid"),
        ),
        (
            {"b64": "AAAAAA==", "type": "float32", "shape": [-1]},
            bad("x", "Tensor check failed: input shape [-1] invalid"),
        ),
        (
            {"b64": "AAAAAA==", "type": "float32", "shape": "4"},
            bad("x", "Tensor check failed: input shape '4' invalid, it should be a list of integers"),
        ),
        (
            {"b64": "AAAA", "type": "int128"},
            bad(
                "x",
                "Tensor check failed: type 'int128' of a b64 object invalid, it should be one of int8, int16, int32, "
                "int64, uint8, uint16, uint32, uint64, float16, fp16, float32, fp32, float64, fp64, bool, str, bytes",
            ),
        ),
        (
            {"b64": "AAAA", "shape": [2]},
            bad(
                "x",
                "Instance tensor check failed: bytes or string type input shape can only be (1,) or empty, but given "
                "shape is [2]",
            ),
        ),
        (
            {"b64": "AAAA", "dtype": "int8"},
            bad("x", "Tensor check failed: unknown key 'dtype' in a b64 object, it takes b64, type and shape"),
        ),
        ({"type": "int8"}, bad("x", "Tensor check failed: a b64 object needs 'b64', a JSON string of base64 data")),
    ],
)
def test_bad_value_fails_its_instance_alone(ms_server, value, message):
    body = {"instances": [{"x": 5}, {"x": value}, {"x": "ok"}]}
    assert predict(ms_server, "/model/echo:echo", body) == [{"y": 5}, {"error_msg": message}, {"y": "ok"}]


def test_missing_input_and_instance_not_an_object(ms_server):
    body = {
        "instances": [
            {"x1": [[1.0, 1.0], [1.0, 1.0]]},
            [1, 2],
            {"x1": [[1.0, 1.0], [1.0, 1.0]], "x2": [[1.0, 1.0], [1.0, 1.0]]},
        ]
    }
    assert predict(ms_server, "/model/add:add_common", body) == [
        {
            "error_msg": "Cannot find input x2 in instance input , servable add, method add_common: the method takes "
            "x1, x2; the instance gives x1"
        },
        {"error_msg": "Instance 1 should be a JSON object of input names and values"},
        {"y": [[2.0, 2.0], [2.0, 2.0]]},
    ]


def test_model_checks_and_failing_stages_fail_their_instances(ms_server):
    body = {
        "instances": [
            {"x1": [[1.0, 1.0], [1.0, 1.0]], "x2": [[1, 1], [1, 1]]},
            {"x1": [[1.0, 1.0], [1.0, 1.0]], "x2": [[1.0, 1.0], [1.0, 1.0]]},
        ]
    }
    assert predict(ms_server, "/model/add:add_common", body) == [
        {
            "error_msg": "Given model input 1 data type kMSI_Int32 not match the data type kMSI_Float32 defined in "
            "model: input 'x2' of model tensor_add.onnx takes float32 [2, 2], given int32 [2, 2]"
        },
        {"y": [[2.0, 2.0], [2.0, 2.0]]},
    ]
    body = {"instances": [{"x": [1]}, {"x": [-2]}, {"x": [3]}]}
    assert predict(ms_server, "/model/probe:positive", body) == [
        {"y": [1]},
        {
            "error_msg": "Call Function 'probe.fail_negative' Failed, method: 'positive', stage index(begin with 1): "
            "1, "
            "error msg: negative value -2"
        },
        {"y": [3]},
    ]


# ---- whole-request errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body, headers, status, message",
    [
        (
            "/model/add:add_common",
            b'{"instances": [',
            None,
            400,
            "The request body is not valid JSON: Expecting value at line 1 column 16",
        ),
        ("/model/add:add_common", [1], None, 400, "The request should be a JSON object with the key 'instances'"),
        (
            "/model/add:add_common",
            {"inputs": []},
            None,
            400,
            "The request should be a JSON object with the key 'instances'",
        ),
        (
            "/model/add:add_common",
            {"instances": [], "id": 1},
            None,
            400,
            "The request has the unknown key 'id': it takes only 'instances'",
        ),
        (
            "/model/add:add_common",
            {"instances": 3},
            None,
            400,
            "'instances' should be a JSON array of instances (objects of input names and values), or one such object",
        ),
        (
            "/model/add:add_common",
            {"instances": []},
            None,
            400,
            "Instances count of request cannot be 0, servable: add, method: add_common",
        ),
        (
            "/model/echo:echo",
            {"instances": [{}] * 10001},
            None,
            400,
            "Instances count 10001 of request exceeds the limit 10000, servable: echo, method: echo",
        ),
        (
            "/model/nope:predict",
            {"instances": [{"x": 1}]},
            None,
            404,
            "Request servable(nope) method(predict) , servable is not available: servable 'nope' is not served; "
            "served: "
            "add, echo, kinds, probe, versioned",
        ),
        (
            "/model/add:nope",
            {"instances": [{"x": 1}]},
            None,
            404,
            "Request servable(add) method(nope) , method is not available: servable add has methods add_cast, "
            "add_common",
        ),
        (
            "/model/add/version/3:add_common",
            {"instances": [{"x": 1}]},
            None,
            404,
            "Request servable(add) method(add_common) version(3) , servable is not available: the served versions of "
            "add "
            "are 1",
        ),
        (
            "/model/add/version/v1:add_common",
            {"instances": [{"x": 1}]},
            None,
            400,
            "Version 'v1' in the URL is not a version number",
        ),
        (
            "/model/add:add_common",
            b"x1=1",
            {"Content-Type": "multipart/form-data; boundary=b"},
            415,
            "Content-Type multipart/form-data is not supported: send the request as application/json",
        ),
    ],
)
def test_whole_request_errors(ms_server, path, body, headers, status, message):
    assert_whole_error(post(ms_server, path, body, headers), status, message)
    assert_add_still_serves("ms_rest", ms_server)


def test_unknown_paths_and_methods(ms_server):
    assert_whole_error(
        request(ms_server.address, "GET", "/model/add:add_common"),
        405,
        "Method GET is not allowed on /model/add:add_common: use POST",
    )
    reply = post(ms_server, "/model/add", {"instances": []})
    assert reply.status == 404
    assert reply.json()["error_msg"].startswith("No endpoint POST /model/add; the endpoints are ")


def test_body_over_the_limit_is_413(ms_server):
    body = {"instances": [{"x": {"b64": b64(bytes(1 << 20))}}]}
    reply = request(ms_server.small, "POST", "/model/echo:echo", body)
    assert_whole_error(reply, 413, "Request body is larger than the limit of 1048576 bytes (max_msg_mb_size 1)")
    body = {"instances": [{"x": {"b64": b64(bytes(1 << 19))}}]}
    reply = request(ms_server.small, "POST", "/model/echo:echo", body)
    assert (reply.status, reply.json()) == (200, {"instances": [{"y": {"b64": b64(bytes(1 << 19))}}]})
