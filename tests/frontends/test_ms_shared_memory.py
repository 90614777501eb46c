"""MindSpore Serving's shared memory form in MSService.Predict (Tensor.shm_data, Instance.output_buffers), from a
client built from the proto, on a server that allows client shared memory: inputs read from the client's memory,
outputs written into its buffers with MindSpore's rules, and every bad case answered per instance."""

from __future__ import annotations

import os
import uuid

import grpc
import numpy as np
import pytest

from mindserve._proto import ms_service_pb2 as pb
from support.paths import BUNDLED_SERVABLES
from support.processes import free_addresses, start_server

pytestmark = pytest.mark.server

X = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)


@pytest.fixture(scope="module")
def ms_server(tmp_path_factory):
    allowed, closed = free_addresses(2)
    process = start_server(
        tmp_path_factory.mktemp("ms_shm"),
        f"""
        server.start_servables([server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0),
                                server.ServableStartConfig({BUNDLED_SERVABLES!r}, "iris", device_ids=0)])
        server.start_grpc_server({allowed!r}, allow_client_shm=True)
        server.start_grpc_server({closed!r})
    """,
        allowed,
    )
    process.closed = closed
    yield process
    process.stop()


@pytest.fixture
def memory():
    """A client's shared memory file of 256 bytes: (key, path); removed after the test."""
    key = f"/ms-test-{uuid.uuid4().hex}"
    path = f"/dev/shm{key}"
    with open(path, "wb") as f:
        f.write(b"\0" * 256)
    yield key, path
    os.unlink(path)


def predict(address, request) -> pb.PredictReply:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            "/mindspore.serving.proto.MSService/Predict",
            request_serializer=pb.PredictRequest.SerializeToString,
            response_deserializer=pb.PredictReply.FromString,
        )
        return call(request, timeout=30)


def shm(key, offset, size=16, total=256):
    return pb.ShmTensorData(memory_key=key, bytes_size=total, data_offset=offset, data_size=size)


def add_request(key, x1_shared=True, buffers=None, servable="add", method="add_common"):
    request = pb.PredictRequest(servable_spec=pb.ServableSpec(name=servable, method_name=method))
    instance = request.instances.add()
    x1 = instance.items["x1"]
    x1.dtype, x1.shape.dims[:] = pb.MS_FLOAT32, [2, 2]
    if x1_shared:
        x1.shm_data.CopyFrom(shm(key, 0))
    else:
        x1.data = X.tobytes()
    x2 = instance.items["x2"]
    x2.dtype, x2.shape.dims[:], x2.data = pb.MS_FLOAT32, [2, 2], (X * 10).tobytes()
    for name, data in (buffers or {}).items():
        instance.output_buffers[name].CopyFrom(data)
    return request


def write(path, offset, data: bytes):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read(path, offset, size) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def test_shm_data_inputs_and_output_buffers(ms_server, memory):
    key, path = memory
    write(path, 0, X.tobytes())
    reply = predict(ms_server.address, add_request(key))
    assert not reply.error_msg
    np.testing.assert_array_equal(np.frombuffer(reply.instances[0].items["y"].data, np.float32).reshape(2, 2), X * 11)
    reply = predict(ms_server.address, add_request(key, buffers={"y": shm(key, 64)}))
    assert not reply.error_msg
    answered = reply.instances[0].items["y"]
    assert (answered.WhichOneof("tensor_data"), answered.shm_data, list(answered.shape.dims), answered.dtype) == (
        "shm_data",
        shm(key, 64),
        [2, 2],
        pb.MS_FLOAT32,
    )
    np.testing.assert_array_equal(np.frombuffer(read(path, 64, 16), np.float32).reshape(2, 2), X * 11)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("undeclared", "Instance 0 has an output buffer for 'z', which is not an output of the method: y"),
        ("data_size", "Output y is 16 bytes, its output buffer's data_size is 8"),
        (
            "input_size",
            "Instances input x1 check failed, detail: Tensor check failed: shm_data data_size 8 does not match "
            "the size 16 of its shape [2, 2] and data type float32",
        ),
        ("outside", "input x1: [250, 250 + 16) reaches outside shared memory region 'shm_data' of 256 bytes"),
        ("too_big", "shared memory region 'shm_data': its file holds 256 bytes, less than offset 0 + byte_size 512"),
        (
            "hostile",
            "the key names no shared memory the server may use: an shm_open name of a regular file in /dev/shm "
            "owned by the server's user or by an owner listed in client_shm_owners",
        ),
    ],
)
def test_bad_shared_memory_requests(ms_server, memory, case, expected):
    key, _ = memory
    request = add_request(key)
    items, instance = request.instances[0].items, request.instances[0]
    if case == "undeclared":
        instance.output_buffers["z"].CopyFrom(shm(key, 64))
    elif case == "data_size":
        instance.output_buffers["y"].CopyFrom(shm(key, 64, size=8))
    elif case == "input_size":
        items["x1"].shm_data.data_size = 8
    elif case == "outside":
        items["x1"].shm_data.data_offset = 250
    elif case == "too_big":
        items["x1"].shm_data.bytes_size = 512
    elif case == "hostile":
        items["x1"].shm_data.memory_key = "/../etc/passwd"
    reply = predict(ms_server.address, request)
    assert [e.error_msg.decode() for e in reply.error_msg] == [expected]


def test_str_outputs_never_go_to_shared_memory(ms_server, memory):
    key, _ = memory
    request = pb.PredictRequest(servable_spec=pb.ServableSpec(name="iris", method_name="predict"))
    instance = request.instances.add()
    x = instance.items["x"]
    x.dtype, x.shape.dims[:] = pb.MS_FLOAT32, [4]
    x.data = np.array([5.1, 3.5, 1.4, 0.2], np.float32).tobytes()
    instance.output_buffers["label"].CopyFrom(shm(key, 0, size=6))
    reply = predict(ms_server.address, request)
    assert [e.error_msg.decode() for e in reply.error_msg] == [
        "Output label is str: str and bytes outputs cannot be written to shared memory"
    ]


def test_a_server_without_client_shared_memory_refuses_the_form(ms_server, memory):
    key, _ = memory
    disabled = (
        "client shared memory is disabled: start the server with allow_client_shm=True to use it "
        "(allow_client_shm: true in serving.yaml, or MINDSERVE_ALLOW_CLIENT_SHM=true)"
    )
    reply = predict(ms_server.closed, add_request(key))
    assert [e.error_msg.decode() for e in reply.error_msg] == [
        f"Instances input x1 check failed, detail: Tensor check failed: {disabled}"
    ]
    reply = predict(ms_server.closed, add_request(key, x1_shared=False, buffers={"y": shm(key, 64)}))
    assert [e.error_msg.decode() for e in reply.error_msg] == [disabled]


def test_the_client_sends_and_receives_large_tensors_through_its_shared_memory(ms_server, monkeypatch):
    from mindserve.client import Client

    sent = []
    client = Client(ms_server.address, "add", "add_common", shared_memory=True, shared_memory_threshold=16)
    real = client._predict

    def spy(request, **kwargs):  # what travelled: references, not bytes
        sent.append(
            [
                (n, t.WhichOneof("tensor_data"), dict(i.output_buffers))
                for i in request.instances
                for n, t in sorted(i.items.items())
            ]
        )
        return real(request, **kwargs)

    monkeypatch.setattr(client, "_predict", spy)
    key_file = f"/dev/shm{client._memory.key}"
    try:
        for k in range(3):
            result = client.infer({"x1": X * k, "x2": X})
            np.testing.assert_array_equal(result[0]["y"], X * k + X)
        assert [kinds for kinds in sent[0]][:2] == [("x1", "shm_data", {}), ("x2", "shm_data", {})]
        assert list(sent[1][0][2]) == ["y"]  # the output's size learnt from the first reply: a buffer from then on
        assert os.stat(key_file).st_mode & 0o777 == 0o600
    finally:
        client.close()
    assert not os.path.exists(key_file)


def test_the_client_option_needs_a_local_server_that_allows_it(ms_server):
    from mindserve.client import Client

    with pytest.raises(
        RuntimeError, match="shared_memory needs a server on this host: a unix: or loopback address, not 192.0.2.1:5500"
    ):
        Client("192.0.2.1:5500", "add", "add_common", shared_memory=True)
    with Client(ms_server.closed, "add", "add_common", shared_memory=True, shared_memory_threshold=16) as client:
        assert client.infer({"x1": X, "x2": X}) == {
            "error": "Instances input x1 check failed, detail: Tensor check "
            "failed: client shared memory is disabled: start the "
            "server with allow_client_shm=True to use it "
            "(allow_client_shm: true in serving.yaml, or "
            "MINDSERVE_ALLOW_CLIENT_SHM=true)"
        }
