"""Every bad input gets its documented error at once, and the server keeps serving after each kind of error.

Normal requests go through ``mindserve.client.Client``; malformed wire messages are sent as raw bytes over a
plain gRPC channel and the replies parsed with ``PredictReply``.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from mindserve._proto import ms_service_pb2 as pb
from mindserve.client import Client
from support.checks import assert_add_still_serves

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

PREDICT = "/mindspore.serving.proto.MSService/Predict"

MS_FLOAT32, MS_INT32, MS_STRING = 11, 6, 13

# error codes of the wire contract
INVALID_INPUTS, SYSTEM_ERROR, SERVABLE_UNAVAILABLE = 2, 3, 5

# MindSpore's texts for add's model inputs, then the input named and what it takes, in numpy's terms
MS_TYPES = (
    "MS_BOOL 1, MS_INT8 2, MS_UINT8 3, MS_INT16 4, MS_UINT16 5, MS_INT32 6, MS_UINT32 7, MS_INT64 8, "
    "MS_UINT64 9, MS_FLOAT16 10, MS_FLOAT32 11, MS_FLOAT64 12, MS_STRING 13, MS_BYTES 14"
)
MISSING_X2 = (
    "Cannot find input x2 in instance input , servable add, method add_common: the method takes "
    "x1, x2; the instance gives x1"
)
X2_INT32 = (
    "Given model input 1 data type kMSI_Int32 not match the data type kMSI_Float32 defined in model: "
    "input 'x2' of model tensor_add.onnx takes float32 [2, 2], given int32 [2, 2]"
)
X1_SIZE = (
    "Given model input 0 size 24 not match the size 16 defined in model: input 'x1' of model tensor_add.onnx "
    "takes float32 [2, 2], given float32 [3, 2]"
)


def _ones(shape=(2, 2), dtype=np.float32):
    return np.ones(shape, dtype)


def _good_instance(value: float = 1.0) -> dict:
    return {"x1": np.full((2, 2), value, np.float32), "x2": np.full((2, 2), value, np.float32)}


def assert_echo_still_serves(address: str) -> None:
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    result = Client(address, "echo", "echo").infer({"x": x})
    assert len(result) == 1 and list(result[0]) == ["y"], result
    assert result[0]["y"].dtype == np.float64
    np.testing.assert_array_equal(result[0]["y"], x)


# ---- raw wire helpers -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_channel(add_server):
    channel = grpc.insecure_channel(add_server.address)
    yield channel
    channel.close()


def _raw_predict(channel: grpc.Channel):
    return channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=None)


def send_raw(channel: grpc.Channel, data: bytes) -> pb.PredictReply:
    reply = _raw_predict(channel)(data, timeout=30)
    assert isinstance(reply, bytes)
    return pb.PredictReply.FromString(reply)


def send_raw_expecting_rpc_error(channel: grpc.Channel, data: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        _raw_predict(channel)(data, timeout=30)
    return info.value


def add_request(name: str = "add", method: str = "add_common", version: int = 0) -> pb.PredictRequest:
    request = pb.PredictRequest()
    request.servable_spec.name = name
    request.servable_spec.method_name = method
    request.servable_spec.version_number = version
    return request


def set_numeric(tensor: pb.Tensor, array: np.ndarray) -> None:
    tensor.dtype = {np.dtype(np.float32): MS_FLOAT32, np.dtype(np.int32): MS_INT32}[array.dtype]
    tensor.shape.dims.extend(array.shape)
    tensor.data = array.tobytes()


def good_raw_request() -> pb.PredictRequest:
    request = add_request()
    items = request.instances.add().items
    set_numeric(items["x1"], np.full((2, 2), 1.5, np.float32))
    set_numeric(items["x2"], np.full((2, 2), 2.0, np.float32))
    return request


def assert_whole_request_error(reply: pb.PredictReply, code: int, message: str) -> None:
    assert len(reply.error_msg) == 1, reply
    assert reply.error_msg[0].error_msg.decode() == message
    assert reply.error_msg[0].error_code == code
    assert len(reply.instances) == 0


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (payloads < 128 bytes)."""
    assert len(payload) < 128
    return bytes([field << 3 | 2, len(payload)]) + payload


# ---- servable, method and version resolution ----------------------------------------------------------------------


def test_unknown_servable(add_server):
    result = Client(add_server.address, "nope", "add_common").infer([_good_instance()])
    assert result == {
        "error": "Request servable(nope) method(add_common) , servable is not available: servable "
        "'nope' is not served; served: add"
    }
    assert_add_still_serves("ms_grpc", add_server.address)


def test_unknown_method(add_server):
    result = Client(add_server.address, "add", "nope").infer([_good_instance()])
    assert result == {
        "error": "Request servable(add) method(nope) , method is not available: servable add has "
        "methods add_cast, add_common"
    }
    assert_add_still_serves("ms_grpc", add_server.address)


def test_unknown_version(add_server):
    result = Client(add_server.address, "add", "add_common", version_number=7).infer([_good_instance()])
    assert result == {
        "error": "Request servable(add) method(add_common) version(7) , servable is not available: the "
        "served versions of add are 1"
    }
    # the running version, asked for by number, still answers
    result = Client(add_server.address, "add", "add_common", version_number=1).infer([_good_instance()])
    np.testing.assert_array_equal(result[0]["y"], np.full((2, 2), 2.0, np.float32))
    assert_add_still_serves("ms_grpc", add_server.address)


def test_empty_instance_list(add_server):
    result = Client(add_server.address, "add", "add_common").infer([])
    assert result == {"error": "Instances count of request cannot be 0, servable: add, method: add_common"}
    assert_add_still_serves("ms_grpc", add_server.address)


# ---- per-instance input errors ----------------------------------------------------------------------------------


def test_missing_input(add_server):
    result = Client(add_server.address, "add", "add_common").infer([{"x1": _ones()}])
    assert result == {"error": MISSING_X2}
    assert_add_still_serves("ms_grpc", add_server.address)


def test_wrong_dtype(add_server):
    result = Client(add_server.address, "add", "add_common").infer([{"x1": _ones(), "x2": _ones(dtype=np.int32)}])
    assert result == {"error": X2_INT32}
    assert_add_still_serves("ms_grpc", add_server.address)


def test_wrong_size(add_server):
    result = Client(add_server.address, "add", "add_common").infer([{"x1": _ones((3, 2)), "x2": _ones()}])
    assert result == {"error": X1_SIZE}
    assert_add_still_serves("ms_grpc", add_server.address)


def test_one_bad_instance_fails_alone(add_server):
    instances = [
        _good_instance(1.0),
        {"x1": _ones()},
        _good_instance(3.0),
        {"x1": _ones(), "x2": _ones(dtype=np.int32)},
        {"x1": _ones((3, 2)), "x2": _ones()},
        _good_instance(-0.5),
    ]
    result = Client(add_server.address, "add", "add_common").infer(instances)
    assert isinstance(result, list) and len(result) == 6, result
    np.testing.assert_array_equal(result[0]["y"], np.full((2, 2), 2.0, np.float32))
    assert result[1] == {"error": MISSING_X2}
    np.testing.assert_array_equal(result[2]["y"], np.full((2, 2), 6.0, np.float32))
    assert result[3] == {"error": X2_INT32}
    assert result[4] == {"error": X1_SIZE}
    np.testing.assert_array_equal(result[5]["y"], np.full((2, 2), -1.0, np.float32))
    for good in (0, 2, 5):
        assert list(result[good]) == ["y"] and result[good]["y"].dtype == np.float32
    assert_add_still_serves("ms_grpc", add_server.address)


def test_one_bad_instance_in_raw_reply_has_its_own_error_entry(raw_channel, add_server):
    request = good_raw_request()
    bad = request.instances.add().items
    set_numeric(bad["x1"], np.ones((2, 2), np.float32))
    set_numeric(bad["x2"], np.ones((2, 2), np.int32))
    request.instances.add().CopyFrom(request.instances[0])
    reply = send_raw(raw_channel, request.SerializeToString())
    assert [e.error_code for e in reply.error_msg] == [0, INVALID_INPUTS, 0]
    assert reply.error_msg[1].error_msg.decode() == X2_INT32
    assert len(reply.instances) == 3
    assert len(reply.instances[1].items) == 0
    for i in (0, 2):
        y = reply.instances[i].items["y"]
        assert y.dtype == MS_FLOAT32 and list(y.shape.dims) == [2, 2]
        np.testing.assert_array_equal(np.frombuffer(y.data, np.float32), np.full(4, 3.5, np.float32))
    assert reply.servable_spec.name == "add" and reply.servable_spec.method_name == "add_common"


def test_all_instances_failing_alike_give_one_error(add_server):
    client = Client(add_server.address, "add", "add_common")
    result = client.infer([{"x1": _ones()}, {"x1": _ones((3, 3))}, {"x1": _ones()}])
    assert result == {"error": MISSING_X2}
    result = client.infer([{"x1": _ones(), "x2": _ones(dtype=np.int32)}] * 3)
    assert result == {"error": X2_INT32}
    # all failing, but not alike: one error per instance
    result = client.infer([{"x1": _ones()}, {"x1": _ones(), "x2": _ones(dtype=np.int32)}])
    assert result == [{"error": MISSING_X2}, {"error": X2_INT32}]
    assert_add_still_serves("ms_grpc", add_server.address)


def test_all_instances_failing_alike_give_one_raw_error_entry(raw_channel, add_server):
    request = add_request()
    for _ in range(3):
        set_numeric(request.instances.add().items["x1"], np.ones((2, 2), np.float32))
    reply = send_raw(raw_channel, request.SerializeToString())
    assert_whole_request_error(reply, INVALID_INPUTS, MISSING_X2)


# ---- malformed tensors (raw PredictRequest protos) ------------------------------------------------------------------


def _data_size(tensor):
    set_numeric(tensor, np.ones((2, 2), np.float32))
    tensor.data = tensor.data[:12]


def _unknown_dtype(tensor):
    set_numeric(tensor, np.ones((2, 2), np.float32))
    tensor.dtype = 99


def _dtype_zero(tensor):
    set_numeric(tensor, np.ones((2, 2), np.float32))
    tensor.dtype = 0


def _negative_dim(tensor):
    tensor.dtype = MS_FLOAT32
    tensor.shape.dims.extend([-1, 2])
    tensor.data = b"\0" * 16


def _huge_shape(tensor):
    tensor.dtype = MS_FLOAT32
    tensor.shape.dims.extend([1 << 62, 1 << 62])
    tensor.data = b"\0" * 16


def _two_strings(tensor):
    tensor.dtype = MS_STRING
    tensor.shape.dims.append(1)
    tensor.bytes_val.extend([b"a", b"b"])


def _string_shape_2(tensor):
    tensor.dtype = MS_STRING
    tensor.shape.dims.append(2)
    tensor.bytes_val.append(b"ab")


def _invalid_utf8(tensor):
    tensor.dtype = MS_STRING
    tensor.shape.dims.append(1)
    tensor.bytes_val.append(b"ok\xff\xfe")


def _bytes_val_on_numeric(tensor):
    set_numeric(tensor, np.ones((2, 2), np.float32))
    tensor.bytes_val.append(b"x")


def _shm_data(tensor):
    tensor.dtype = MS_FLOAT32
    tensor.shape.dims.extend([2, 2])
    tensor.shm_data.memory_key = "some-key"
    tensor.shm_data.bytes_size = 16
    tensor.shm_data.data_size = 16


MALFORMED = {
    "data_size": (
        _data_size,
        "Tensor check failed: input data size 12 invalid, shape [2, 2] of kMSI_Float32 needs 16 bytes",
    ),
    "unknown_dtype": (
        _unknown_dtype,
        "Tensor check failed: input data type 99 invalid: the data types are " + MS_TYPES,
    ),
    "dtype_zero": (
        _dtype_zero,
        "Tensor check failed: input data type kMSI_Unknown invalid: the data types are " + MS_TYPES,
    ),
    "negative_dim": (_negative_dim, "Tensor check failed: input shape [-1, 2] invalid"),
    "huge_shape": (
        _huge_shape,
        f"Tensor check failed: input data size 16 invalid, shape [{1 << 62}, {1 << 62}] of "
        f"kMSI_Float32 needs {(1 << 124) * 4} bytes",
    ),
    "two_strings": (_two_strings, "Instance tensor check failed: bytes or string type shape batch size can only be 1"),
    "string_shape_2": (
        _string_shape_2,
        "Instance tensor check failed: bytes or string type input shape can only "
        "be (1,) or empty, but given shape is [2]",
    ),
    "invalid_utf8": (_invalid_utf8, "Instance tensor check failed: string input is not valid UTF-8"),
    "bytes_val_on_numeric": (
        _bytes_val_on_numeric,
        "Tensor check failed: bytes_val is only for string and bytes tensors, not kMSI_Float32",
    ),
    "shm_data": (
        _shm_data,
        "Tensor check failed: client shared memory is disabled: start the server with "
        "allow_client_shm=True to use it (allow_client_shm: true in serving.yaml, or "
        "MINDSERVE_ALLOW_CLIENT_SHM=true)",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_tensor(raw_channel, add_server, case):
    make, detail = MALFORMED[case]
    request = add_request()
    items = request.instances.add().items
    make(items["x1"])
    set_numeric(items["x2"], np.ones((2, 2), np.float32))
    reply = send_raw(raw_channel, request.SerializeToString())
    assert_whole_request_error(reply, INVALID_INPUTS, f"Instances input x1 check failed, detail: {detail}")
    assert reply.servable_spec.name == "add"
    # the same bad tensor beside a good instance fails alone
    request.instances.add().CopyFrom(good_raw_request().instances[0])
    reply = send_raw(raw_channel, request.SerializeToString())
    assert [e.error_code for e in reply.error_msg] == [INVALID_INPUTS, 0]
    assert reply.error_msg[0].error_msg.decode() == f"Instances input x1 check failed, detail: {detail}"
    np.testing.assert_array_equal(
        np.frombuffer(reply.instances[1].items["y"].data, np.float32), np.full(4, 3.5, np.float32)
    )
    assert_add_still_serves("ms_grpc", add_server.address)


def test_good_raw_request_is_answered(raw_channel):
    reply = send_raw(raw_channel, good_raw_request().SerializeToString())
    assert len(reply.error_msg) == 0
    assert len(reply.instances) == 1
    y = reply.instances[0].items["y"]
    assert y.dtype == MS_FLOAT32 and list(y.shape.dims) == [2, 2]
    np.testing.assert_array_equal(np.frombuffer(y.data, np.float32), np.full(4, 3.5, np.float32))


# ---- messages that are not valid PredictRequests --------------------------------------------------------------------


def test_undecodable_bytes_are_invalid_argument(raw_channel, add_server):
    error = send_raw_expecting_rpc_error(raw_channel, b"\xff\xff\xff")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("the request is not a valid PredictRequest message"), error.details()
    assert "Traceback" not in error.details()
    assert_add_still_serves("ms_grpc", add_server.address)


def test_truncated_message_is_invalid_argument(raw_channel, add_server):
    data = good_raw_request().SerializeToString()
    error = send_raw_expecting_rpc_error(raw_channel, data[:-5])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("the request is not a valid PredictRequest message"), error.details()
    assert_add_still_serves("ms_grpc", add_server.address)


def test_varint_where_a_message_is_expected(raw_channel, add_server):
    data = good_raw_request().SerializeToString() + b"\x08\x01"  # field 1 (servable_spec), wire type 0
    error = send_raw_expecting_rpc_error(raw_channel, data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "the request is not a valid PredictRequest message: PredictRequest: field number 1 "
        "(wire type 0) has an unknown number or a wrong wire type"
    )
    assert_add_still_serves("ms_grpc", add_server.address)


def test_length_delimited_dtype(raw_channel, add_server):
    data_x1 = np.ones((2, 2), np.float32).tobytes()
    x1 = _ld(1, b"\x08\x02\x08\x02") + _ld(2, bytes([MS_FLOAT32])) + _ld(3, data_x1)  # dtype as bytes
    x2 = _ld(1, b"\x08\x02\x08\x02") + bytes([2 << 3, MS_FLOAT32]) + _ld(3, data_x1)
    instance = _ld(1, _ld(1, b"x1") + _ld(2, x1)) + _ld(1, _ld(1, b"x2") + _ld(2, x2))
    spec = _ld(1, b"add") + _ld(2, b"add_common")
    data = _ld(1, spec) + _ld(2, instance)
    error = send_raw_expecting_rpc_error(raw_channel, data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "the request is not a valid PredictRequest message: instances[0].items['x1']: field "
        "number 2 (wire type 2) has an unknown number or a wrong wire type"
    )
    # the same bytes with dtype as a varint are a good request
    x1_ok = _ld(1, b"\x08\x02\x08\x02") + bytes([2 << 3, MS_FLOAT32]) + _ld(3, data_x1)
    instance = _ld(1, _ld(1, b"x1") + _ld(2, x1_ok)) + _ld(1, _ld(1, b"x2") + _ld(2, x2))
    reply = send_raw(raw_channel, _ld(1, spec) + _ld(2, instance))
    assert len(reply.error_msg) == 0
    np.testing.assert_array_equal(
        np.frombuffer(reply.instances[0].items["y"].data, np.float32), np.full(4, 2.0, np.float32)
    )
    assert_add_still_serves("ms_grpc", add_server.address)


def test_unknown_field_number_is_invalid_argument(raw_channel, add_server):
    data = good_raw_request().SerializeToString() + b"\x48\x01"  # field 9, varint: not in PredictRequest
    error = send_raw_expecting_rpc_error(raw_channel, data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "the request is not a valid PredictRequest message: PredictRequest: field number 9 "
        "(wire type 0) has an unknown number or a wrong wire type"
    )
    assert_add_still_serves("ms_grpc", add_server.address)


def test_wrong_wire_type_in_servable_spec(raw_channel, add_server):
    spec = _ld(1, b"add") + _ld(2, b"add_common") + _ld(3, b"\x01")  # version_number as bytes
    instance = good_raw_request().instances[0].SerializeToString()
    data = _ld(1, spec) + bytes([2 << 3 | 2, len(instance)]) + instance
    error = send_raw_expecting_rpc_error(raw_channel, data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "the request is not a valid PredictRequest message: servable_spec: field number 3 "
        "(wire type 2) has an unknown number or a wrong wire type"
    )
    assert_add_still_serves("ms_grpc", add_server.address)


def test_malformed_messages_never_answer_unknown(raw_channel):
    good = good_raw_request().SerializeToString()
    for data in (
        b"\xff\xff\xff",
        b"\x0a",
        b"\x0a\x7f",
        good + b"\x08",
        good + b"\x0b",
        good[: len(good) // 2],
        b"\x12\x04\x0a\x02\x0a\x00" + b"\x08\x01",
    ):
        error = send_raw_expecting_rpc_error(raw_channel, data)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (data, error.code(), error.details())
        assert error.details().startswith("the request is not a valid PredictRequest message"), error.details()


# ---- errors in user stages ------------------------------------------------------------------------------------------


def test_exception_in_stage(echo_server):
    x = np.array([1.0], np.float32)
    assert str(x) == "[1.]"
    result = Client(echo_server.address, "echo", "raise_error").infer({"x": x})
    assert result == {
        "error": "Call Function 'echo.fail' Failed, method: 'raise_error', stage index(begin with 1): "
        "1, error msg: bad value [1.]"
    }
    assert_echo_still_serves(echo_server.address)


def test_exception_in_stage_per_instance_text(echo_server):
    xs = [np.array([1.0], np.float32), np.array([2, 3], np.int64)]
    result = Client(echo_server.address, "echo", "raise_error").infer([{"x": x} for x in xs])
    assert result == [
        {
            "error": f"Call Function 'echo.fail' Failed, method: 'raise_error', stage index(begin with "
            f"1): 1, error msg: bad value {x}"
        }
        for x in xs
    ]
    assert str(xs[1]) == "[2 3]"
    assert_echo_still_serves(echo_server.address)


def test_wrong_output_count(echo_server):
    result = Client(echo_server.address, "echo", "wrong_count").infer({"x": np.array([1.0, 2.0])})
    assert result == {
        "error": "Call Function 'echo.identity' Failed, method: 'wrong_count', stage index(begin with "
        "1): 1, error msg: The outputs number 1 of one instance returned by Function "
        "'echo.identity' is not equal to the outputs number 2 registered in method "
        "wrong_count"
    }
    assert_echo_still_serves(echo_server.address)


def test_unsupported_output_type(echo_server):
    result = Client(echo_server.address, "echo", "unsupported_output").infer({"x": np.array([1.0])})
    assert result == {
        "error": "Method 'unsupported_output' output 'y': unsupported type <class 'dict'>, a method "
        "output must be a numpy array, str, bytes or a scalar"
    }
    assert_echo_still_serves(echo_server.address)


def test_stage_error_fails_only_its_instances(echo_server):
    """In a method whose stage fails for every instance, a good request before and after is unaffected, and
    several such requests in flight each get their own error."""
    client = Client(echo_server.address, "echo", "raise_error")
    pending = [client.infer_async({"x": np.array([float(i)], np.float32)}) for i in range(6)]
    for i, future in enumerate(pending):
        assert future.result(30) == {
            "error": f"Call Function 'echo.fail' Failed, method: 'raise_error', stage "
            f"index(begin with 1): 1, error msg: bad value "
            f"{np.array([float(i)], np.float32)}"
        }
    assert_echo_still_serves(echo_server.address)


# ---- error codes in raw replies -------------------------------------------------------------------------------------


def test_error_code_unknown_servable(raw_channel, add_server):
    request = good_raw_request()
    request.servable_spec.name = "nope"
    reply = send_raw(raw_channel, request.SerializeToString())
    assert_whole_request_error(
        reply,
        SERVABLE_UNAVAILABLE,
        "Request servable(nope) method(add_common) , servable is not available: servable "
        "'nope' is not served; served: add",
    )
    assert reply.servable_spec.name == "nope"
    request = good_raw_request()
    request.servable_spec.version_number = 7
    reply = send_raw(raw_channel, request.SerializeToString())
    assert_whole_request_error(
        reply,
        SERVABLE_UNAVAILABLE,
        "Request servable(add) method(add_common) version(7) , servable is not available: "
        "the served versions of add are 1",
    )
    assert_add_still_serves("ms_grpc", add_server.address)


def test_error_code_unknown_method(raw_channel):
    request = good_raw_request()
    request.servable_spec.method_name = "nope"
    reply = send_raw(raw_channel, request.SerializeToString())
    assert len(reply.error_msg) == 1 and reply.error_msg[0].error_code not in (0, SERVABLE_UNAVAILABLE)
    assert (
        reply.error_msg[0].error_msg == b"Request servable(add) method(nope) , method is not available: servable "
        b"add has methods add_cast, add_common"
    )


def test_error_code_bad_input(raw_channel):
    request = add_request()
    items = request.instances.add().items
    set_numeric(items["x1"], np.ones((2, 2), np.float32))
    set_numeric(items["x2"], np.ones((2, 2), np.int32))
    reply = send_raw(raw_channel, request.SerializeToString())
    assert_whole_request_error(reply, INVALID_INPUTS, X2_INT32)
    request = add_request()
    request.instances.add()
    reply = send_raw(raw_channel, request.SerializeToString())
    assert_whole_request_error(
        reply,
        INVALID_INPUTS,
        "Cannot find input x1 in instance input , servable add, method add_common: the "
        "method takes x1, x2; the instance gives none",
    )
    reply = send_raw(raw_channel, add_request().SerializeToString())
    assert_whole_request_error(
        reply, INVALID_INPUTS, "Instances count of request cannot be 0, servable: add, method: add_common"
    )


def test_error_code_stage_exception(echo_server):
    request = add_request("echo", "raise_error")
    set_numeric(request.instances.add().items["x"], np.array([1.0], np.float32))
    with grpc.insecure_channel(echo_server.address) as channel:
        reply = send_raw(channel, request.SerializeToString())
        assert_whole_request_error(
            reply,
            SYSTEM_ERROR,
            "Call Function 'echo.fail' Failed, method: 'raise_error', "
            "stage index(begin with 1): 1, error msg: bad value [1.]",
        )
        # mixed: a good method call on the same channel right after
        request = add_request("echo", "echo")
        set_numeric(request.instances.add().items["x"], np.array([4.0], np.float32))
        reply = send_raw(channel, request.SerializeToString())
        assert len(reply.error_msg) == 0
        assert np.frombuffer(reply.instances[0].items["y"].data, np.float32).tolist() == [4.0]
