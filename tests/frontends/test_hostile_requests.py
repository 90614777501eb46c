"""Requests made to hurt: none of them may kill a worker, stall the master or fail another client's instances.

Each test is a repro of a hole found by trying the server as an attacker would: tensors of more dims than numpy
takes, hundreds of thousands of empty instances, a megabyte of model name, one bad instance in a batch stage's
chunk or in a model run shared with good ones. Every one gets a clear error; the worker processes stay the same;
the next normal request is answered correctly.
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg

from mindserve._frontends.grpc.wire_write import varint
from mindserve._proto import ms_service_pb2 as pb
from mindserve.client import Client
from support import model_files
from support.messages import grpc_inference as oip
from support.paths import BUNDLED_SERVABLES
from support.processes import child_pids, free_port, start_server
from support.rest import request as http_request

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

PREDICT = "/mindspore.serving.proto.MSService/Predict"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVER_LIVE = "/inference.GRPCInferenceService/ServerLive"

GUARD_CONFIG = '''
import numpy as np
from mindserve.server import register

table = register.declare_model(model_file="lookup.onnx", model_format="ONNX", with_batch_dim=True)


def check_rows(instances):
    """A batch stage that raises, as a new user writes it, when one instance is bad."""
    out = []
    for (x,) in instances:
        if x.size != 3:
            raise ValueError(f"x must hold 3 measurements, got {x.size}")
        out.append((x * 2,))
    return out


@register.register_method(output_names=["y"])
def double(x):
    return register.add_stage(check_rows, x, outputs_count=1, batch_size=4)


@register.register_method(output_names=["y"])
def lookup(i):
    return register.add_stage(table, i, outputs_count=1)
'''


def _dims_text(name: str, ndims: int) -> str:
    return (
        f"Instances input {name} check failed, detail: Tensor check failed: input shape has {ndims} dimensions, "
        f"more than the limit 16"
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    root = tmp / "servables"
    (root / "guard" / "1").mkdir(parents=True)
    (root / "guard" / "servable_config.py").write_text(GUARD_CONFIG)
    model_files.lookup_model(str(root / "guard" / "1" / "lookup.onnx"))
    address, rest = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    process = start_server(
        tmp,
        f"""
        server.start_servables([server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0),
                                server.ServableStartConfig({str(root)!r}, "guard", device_ids=0)])
        server.start_grpc_server({address!r})
        server.start_restful_server({rest!r})
    """,
        address,
    )
    process.rest = rest
    yield process
    process.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 512 << 20)]) as ch:
        yield ch


def _add_serves(server) -> None:
    """A normal request after the hostile one, on both gRPC protocols: the right answer."""
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    assert Client(server.address, "add", "add_common").infer([{"x1": x, "x2": x}]) == [{"y": pytest.approx(x * 2)}]
    with tg.InferenceServerClient(server.address) as triton:
        inputs = [tg.InferInput(n, [1, 2, 2], "FP32") for n in ("x1", "x2")]
        for tensor in inputs:
            tensor.set_data_from_numpy(x[None])
        np.testing.assert_array_equal(triton.infer("add.add_common", inputs).as_numpy("y"), x[None] * 2)


def _nested(ndims: int) -> list:
    value: list = [1.0, 2.0]
    for _ in range(ndims - 1):
        value = [value]
    return value


@pytest.mark.parametrize("ndims", [17, 32, 33, 200])
def test_a_tensor_of_too_many_dims_is_refused_on_every_protocol(server, channel, ndims):
    """numpy (the client's, the worker's) refuses arrays of more than 32 dims: the requests are made by hand."""
    workers = sorted(child_pids(server.proc.pid))
    shape = [2] + [1] * (ndims - 1)
    data = np.ones(2, np.float32).tobytes()

    # MSService: the instance fails with the text, as other bad instances do, and its good neighbour is served
    request = pb.PredictRequest(servable_spec=pb.ServableSpec(name="add", method_name="add_common"))
    bad = pb.Tensor(shape=pb.TensorShape(dims=shape), dtype=pb.MS_FLOAT32, data=data)
    good = pb.Tensor(shape=pb.TensorShape(dims=[2, 2]), dtype=pb.MS_FLOAT32, data=np.ones(4, np.float32).tobytes())
    request.instances.add(items={"x1": bad, "x2": bad})
    request.instances.add(items={"x1": good, "x2": good})
    reply = pb.PredictReply.FromString(channel.unary_unary(PREDICT)(request.SerializeToString(), timeout=60))
    assert [(e.error_code, e.error_msg.decode()) for e in reply.error_msg] == [(2, _dims_text("x1", ndims)), (0, "")]
    assert np.frombuffer(reply.instances[1].items["y"].data, np.float32).tolist() == [2.0] * 4

    # Open Inference Protocol over gRPC (dim 0 is the instances, so the tensor has one dim more)
    request = oip.ModelInferRequest(model_name="add.add_common")
    for name in ("x1", "x2"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, *shape])
        request.raw_input_contents.append(data)
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(MODEL_INFER)(request.SerializeToString(), timeout=60)
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, _dims_text("x1", ndims + 1))

    # KServe v2 REST, JSON data with a shape of that many dims
    body = {"inputs": [{"name": n, "shape": [1, *shape], "datatype": "FP32", "data": [1.0, 1.0]} for n in ("x1", "x2")]}
    reply = http_request(server.rest, "POST", "/v2/models/add.add_common/infer", body)
    assert (reply.status, reply.json()) == (400, {"error": _dims_text("x1", ndims + 1)})

    # MindSpore's REST form: a JSON array nested that deep, or a b64 tensor with that shape
    instance = {"x1": _nested(ndims), "x2": _nested(ndims)}
    reply = http_request(server.rest, "POST", "/model/add:add_common", {"instances": [instance]})
    assert (reply.status, reply.json()) == (200, {"instances": [{"error_msg": _dims_text("x1", ndims)}]})
    b64 = {"b64": "AACAPwAAgD8=", "type": "fp32", "shape": shape}
    reply = http_request(server.rest, "POST", "/model/add:add_common", {"instances": [{"x1": b64, "x2": b64}]})
    assert (reply.status, reply.json()) == (200, {"instances": [{"error_msg": _dims_text("x1", ndims)}]})

    assert sorted(child_pids(server.proc.pid)) == workers
    _add_serves(server)


def test_sixteen_dims_are_served(server):
    """The limit itself is served, by a Python stage (MSService) and by a model (MindSpore's REST form)."""
    x = np.arange(4, dtype=np.float32).reshape((2, 2) + (1,) * 14)
    (result,) = Client(server.address, "guard", "double").infer([{"x": np.ones((3,) + (1,) * 15, np.float32)}])
    np.testing.assert_array_equal(result["y"], np.full((3,) + (1,) * 15, 2, np.float32))
    body = {"instances": [{"x1": x.tolist(), "x2": x.tolist()}]}
    reply = http_request(server.rest, "POST", "/model/add:add_common", body)
    # add's model takes [2, 2]: 16 dims of that size pass, as MindSpore Serving takes any shape of the model's size
    assert (reply.status, reply.json()) == (200, {"instances": [{"y": [[0.0, 2.0], [4.0, 6.0]]}]})


def _instance(tensor: pb.Tensor) -> bytes:
    return pb.Instance(items={"x1": tensor, "x2": tensor}).SerializeToString()


def _many_instances(count: int, spec: pb.ServableSpec, tensor: pb.Tensor) -> bytes:
    """A PredictRequest of ``count`` identical instances, built as bytes (protobuf objects would take minutes)."""
    one = _instance(tensor)
    field = b"\x12" + varint(len(one)) + one
    spec_bytes = spec.SerializeToString()
    return b"\x0a" + varint(len(spec_bytes)) + spec_bytes + field * count


@pytest.mark.parametrize("extra_field", [False, True])
def test_three_hundred_thousand_empty_instances_are_refused_before_they_are_read(server, channel, extra_field):
    workers = sorted(child_pids(server.proc.pid))
    spec = pb.ServableSpec(name="add", method_name="add_common")
    data = _many_instances(300_000, spec, pb.Tensor(shape=pb.TensorShape(dims=[0]), dtype=pb.MS_FLOAT32))
    if extra_field:  # a field the C reader does not know (a fixed64 of number 9) still lets it count
        data = b"\x49" + bytes(8) + data
    reply = pb.PredictReply.FromString(channel.unary_unary(PREDICT)(data, timeout=60))
    assert [(e.error_code, e.error_msg.decode()) for e in reply.error_msg] == [
        (2, "Instances count 300000 of request exceeds the limit 10000, servable: add, method: add_common")
    ]
    assert reply.servable_spec == spec
    assert oip.ServerLiveResponse.FromString(
        channel.unary_unary(SERVER_LIVE)(oip.ServerLiveRequest().SerializeToString(), timeout=10)
    ).live
    assert sorted(child_pids(server.proc.pid)) == workers
    _add_serves(server)


def test_the_instance_limit_is_counted_on_every_protocol(server, channel):
    """10000 instances pass and 10001 are refused, on MSService, OIP gRPC and both REST forms."""
    text = "Instances count 10001 of request exceeds the limit 10000, servable: add, method: add_common"
    row = np.ones((2, 2), np.float32)
    tensor = pb.Tensor(shape=pb.TensorShape(dims=[2, 2]), dtype=pb.MS_FLOAT32, data=row.tobytes())
    spec = pb.ServableSpec(name="add", method_name="add_common")
    for count, error in ((10000, None), (10001, text)):
        reply = pb.PredictReply.FromString(
            channel.unary_unary(PREDICT)(_many_instances(count, spec, tensor), timeout=60)
        )
        if error is None:
            assert (len(reply.instances), list(reply.error_msg)) == (10000, [])
            assert np.frombuffer(reply.instances[-1].items["y"].data, np.float32).tolist() == [2.0] * 4
        else:
            assert [(e.error_code, e.error_msg.decode()) for e in reply.error_msg] == [(2, text)]
    request = oip.ModelInferRequest(model_name="add.add_common")
    for name in ("x1", "x2"):
        request.inputs.add(name=name, datatype="FP32", shape=[10001, 2, 2])
        request.raw_input_contents.append(np.ones((10001, 2, 2), np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(MODEL_INFER)(request.SerializeToString(), timeout=60)
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, text)
    body: dict[str, list] = {
        "inputs": [{"name": n, "shape": [10001, 2, 2], "datatype": "FP32", "data": [1.0] * 40004} for n in ("x1", "x2")]
    }
    reply = http_request(server.rest, "POST", "/v2/models/add.add_common/infer", body)
    assert (reply.status, reply.json()) == (400, {"error": text})
    body = {"instances": [{"x1": row.tolist(), "x2": row.tolist()}] * 10001}
    reply = http_request(server.rest, "POST", "/model/add:add_common", body)
    assert (reply.status, reply.json()) == (400, {"error_msg": text})


def test_empty_instances_under_the_limit_are_answered(server, channel):
    """Requests of many instances are parsed off the event loop: they are answered like any other."""
    spec = pb.ServableSpec(name="guard", method_name="double")
    one = pb.Instance(
        items={
            "x": pb.Tensor(shape=pb.TensorShape(dims=[3]), dtype=pb.MS_FLOAT32, data=np.ones(3, np.float32).tobytes())
        }
    ).SerializeToString()
    bad = pb.Instance(items={"x": pb.Tensor(shape=pb.TensorShape(dims=[0]), dtype=pb.MS_FLOAT32)}).SerializeToString()
    spec_bytes = spec.SerializeToString()
    data = (
        b"\x0a"
        + varint(len(spec_bytes))
        + spec_bytes
        + (b"\x12" + varint(len(one)) + one) * 2000
        + b"\x12"
        + varint(len(bad))
        + bad
    )
    reply = pb.PredictReply.FromString(channel.unary_unary(PREDICT)(data, timeout=60))
    assert len(reply.instances) == 2001 and len(reply.error_msg) == 2001
    assert [e.error_code for e in reply.error_msg[:2000]] == [0] * 2000
    assert reply.error_msg[2000].error_msg.decode() == (
        "Call Function 'guard.check_rows' Failed, method: 'double', stage index(begin with 1): 1, error msg: x must "
        "hold 3 measurements, got 0"
    )
    assert np.frombuffer(reply.instances[1999].items["y"].data, np.float32).tolist() == [2.0] * 3


LONG = "m" * 1_000_000
CLIPPED = "m" * 128 + "... (1000000 characters)"


def test_a_megabyte_model_name_is_not_found_with_a_short_text(server, channel):
    request = oip.ModelInferRequest(model_name=LONG)
    request.inputs.add(name="x1", datatype="FP32", shape=[1])
    request.raw_input_contents.append(b"\0" * 4)
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(MODEL_INFER)(request.SerializeToString(), timeout=60)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == (
        f"Model '{CLIPPED}' is not found, models are named 'servable.method', or "
        f"'servable' for a servable with a single method"
    )

    request = pb.PredictRequest(servable_spec=pb.ServableSpec(name=LONG, method_name="add_common"))
    request.instances.add()
    reply = pb.PredictReply.FromString(channel.unary_unary(PREDICT)(request.SerializeToString(), timeout=60))
    assert [e.error_msg.decode() for e in reply.error_msg] == [
        f"Request servable({CLIPPED}) method(add_common) , servable is not available: servable '{CLIPPED}' is not "
        f"served; served: add, guard"
    ]

    body = {"inputs": [{"name": n, "shape": [1], "datatype": "FP32", "data": [1.0]} for n in ("x1", "x2", LONG)]}
    reply = http_request(server.rest, "POST", "/v2/models/add.add_common/infer", body)
    assert (reply.status, reply.json()) == (
        400,
        {"error": f"Unexpected input {CLIPPED} in request inputs , servable add, method add_common takes x1, x2"},
    )
    _add_serves(server)


def test_a_bad_instance_in_a_batch_stage_fails_alone(server):
    """Ten instances, the sixth with 1 measurement instead of 3, through a stage of batch_size=4 that raises
    for the whole chunk: only the sixth fails, with its own message."""
    instances = [{"x": np.full(3, i, np.float32)} for i in range(10)]
    instances[5] = {"x": np.ones(1, np.float32)}
    results = Client(server.address, "guard", "double").infer(instances)
    for i, result in enumerate(results):
        if i == 5:
            assert result == {
                "error": "Call Function 'guard.check_rows' Failed, method: 'double', stage index(begin "
                "with 1): 1, error msg: x must hold 3 measurements, got 1"
            }
        else:
            np.testing.assert_array_equal(result["y"], np.full(3, 2 * i, np.float32))


def test_a_bad_row_in_a_model_run_fails_alone(server):
    """An index outside the model's table makes ONNX Runtime fail the run: the batch is run again in parts and
    only that instance fails."""
    indices = [0, 4, 7, 1, 2, 3]
    results = Client(server.address, "guard", "lookup").infer([{"i": np.int64(i)} for i in indices])
    for i, result in zip(indices, results):
        if i == 7:
            assert result["error"].startswith("Model(lookup.onnx) run failed: "), result
            assert "idx=7 must be within the inclusive range [-5,4]" in result["error"]
        else:
            np.testing.assert_array_equal(result["y"], np.array([2 * i, 2 * i + 1], np.float32))


def test_bad_instances_of_one_client_do_not_fail_those_of_others(tmp_path):
    """Eight clients send at once to a worker that waits 50 ms to fill its batches (so their instances share
    chunks of the batch stage): only the bad client's bad instance fails."""
    root = tmp_path / "servables"
    (root / "guard" / "1").mkdir(parents=True)
    (root / "guard" / "servable_config.py").write_text(GUARD_CONFIG)
    model_files.lookup_model(str(root / "guard" / "1" / "lookup.onnx"))
    address = f"127.0.0.1:{free_port()}"
    process = start_server(
        tmp_path,
        f"""
        server.start_servables(server.ServableStartConfig({str(root)!r}, "guard", device_ids=0,
                                                          max_batch_delay_ms=50))
        server.start_grpc_server({address!r})
    """,
        address,
    )
    try:
        clients = [Client(address, "guard", "double") for _ in range(8)]
        sent = [[{"x": np.full(3, 10 * c + k, np.float32)} for k in range(2)] for c in range(8)]
        sent[3][1] = {"x": np.ones(2, np.float32)}
        futures = [client.infer_async(instances) for client, instances in zip(clients, sent)]
        for c, future in enumerate(futures):
            for k, result in enumerate(future.result()):
                if (c, k) == (3, 1):
                    assert result["error"].endswith("error msg: x must hold 3 measurements, got 2"), result
                else:
                    np.testing.assert_array_equal(result["y"], np.full(3, 2 * (10 * c + k), np.float32))
    finally:
        process.stop()


def test_the_instance_limit_is_a_setting(tmp_path):
    root = tmp_path / "servables"
    (root / "guard" / "1").mkdir(parents=True)
    (root / "guard" / "servable_config.py").write_text(GUARD_CONFIG)
    model_files.lookup_model(str(root / "guard" / "1" / "lookup.onnx"))
    address = f"127.0.0.1:{free_port()}"
    process = start_server(
        tmp_path,
        f"""
        server.start_servables(server.ServableStartConfig({str(root)!r}, "guard", device_ids=0))
        server.context.set_max_request_instances(3)
        server.start_grpc_server({address!r})
    """,
        address,
    )
    try:
        client = Client(address, "guard", "lookup")
        assert [r["y"].tolist() for r in client.infer([{"i": np.int64(k)} for k in range(3)])] == [
            [0.0, 1.0],
            [2.0, 3.0],
            [4.0, 5.0],
        ]
        assert client.infer([{"i": np.int64(k)} for k in range(4)]) == {
            "error": "Instances count 4 of request exceeds the limit 3, servable: guard, method: lookup"
        }
    finally:
        process.stop()


def test_a_header_that_is_not_utf8_is_answered_400(server):
    """aiohttp gives header bytes that are not UTF-8 as surrogate escapes; echoed, they must still encode."""
    import socket

    host, port = server.rest.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/add.add_common/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            b"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: \xa1\r\n\r\n"
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert json.loads(body) == {
        "error": "Inference-Header-Content-Length '\\udca1' invalid: it should be the byte "
        "size of the JSON at the start of the 0-byte body"
    }
