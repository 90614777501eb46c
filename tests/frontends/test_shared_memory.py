"""Clients' system shared memory through tritonclient's own utilities, over gRPC and REST: inputs, outputs, both,
status, unregister; off by default; CUDA answered; and every hostile registration and use refused with a clear
error that never repeats the key, the server serving on."""

from __future__ import annotations

import os
import re
import threading
import uuid

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from support import servables
from support.messages import grpc_inference as oip
from support.paths import BUNDLED_SERVABLES
from support.processes import free_addresses, start_server, wait_until
from support.rest import request

pytestmark = pytest.mark.server

HELD_CONFIG = """
import os
import re
import time
from mindserve.server import register

HERE = os.path.dirname(__file__)


def held(x):
    open(os.path.join(HERE, "started"), "w").close()
    deadline = time.monotonic() + 60
    while os.path.exists(os.path.join(HERE, "hold")) and time.monotonic() < deadline:
        time.sleep(0.01)
    return x + 1


@register.register_method(output_names=["y"])
def plus_one(x):
    return register.add_stage(held, x, outputs_count=1)
"""
X = np.arange(8, dtype=np.float32).reshape(2, 2, 2)


@pytest.fixture(scope="module")
def shm_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("shm")
    folder = servables.write(str(root / "servables"), "held", HELD_CONFIG)
    grpc_address, rest, closed, closed_rest = free_addresses(4)
    process = start_server(
        root,
        f"""
        server.start_servables([server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0),
                                server.ServableStartConfig({str(root / "servables")!r}, "held", device_ids=0)])
        server.start_grpc_server({grpc_address!r}, allow_client_shm=True)
        server.start_restful_server({rest!r}, allow_client_shm=True)
        server.start_grpc_server({closed!r})
        server.start_restful_server({closed_rest!r})
    """,
        grpc_address,
    )
    process.rest, process.closed, process.closed_rest = rest, closed, closed_rest
    process.hold, process.started = os.path.join(folder, "hold"), os.path.join(folder, "started")
    yield process
    process.stop()


@pytest.fixture
def regions():
    """Create client regions (tritonclient's utilities), destroyed after the test."""
    made = []

    def create(size: int, name: str = ""):
        key = f"/test-{uuid.uuid4().hex}"
        handle = shm.create_shared_memory_region(name or key[1:], key, size)
        made.append(handle)
        return key, handle

    yield create
    for handle in made:
        try:
            shm.destroy_shared_memory_region(handle)
        except Exception:
            pass


def clients(server):
    return [
        (triton_grpc.InferenceServerClient(server.address), triton_grpc),
        (triton_http.InferenceServerClient(server.rest), triton_http),
    ]


@pytest.fixture(params=["grpc", "rest"])
def client(request, shm_server):
    made = dict(zip(["grpc", "rest"], clients(shm_server)))[request.param]
    made[0].unregister_system_shared_memory()
    yield made
    made[0].unregister_system_shared_memory()


def add_inputs(module, shared: bool, region: str = "in"):
    tensors = [module.InferInput(name, [2, 2, 2], "FP32") for name in ("x1", "x2")]
    for k, tensor in enumerate(tensors):
        if shared:
            tensor.set_shared_memory(region, X.nbytes, offset=k * X.nbytes)
        else:
            tensor.set_data_from_numpy(X * (k + 1))
    return tensors


def requested(module, shared: bool, region: str = "out", size: int = X.nbytes):
    out = (
        module.InferRequestedOutput("y")
        if module is triton_grpc
        else module.InferRequestedOutput("y", binary_data=True)
    )
    if shared:
        out.set_shared_memory(region, size)
    return out


@pytest.mark.parametrize("inputs_shared, output_shared", [(True, False), (False, True), (True, True)])
def test_inputs_outputs_or_both_in_shared_memory(client, regions, inputs_shared, output_shared):
    triton, module = client
    in_key, in_handle = regions(2 * X.nbytes)
    out_key, out_handle = regions(X.nbytes)
    shm.set_shared_memory_region(in_handle, [X, X * 2])
    triton.register_system_shared_memory("in", in_key, 2 * X.nbytes)
    triton.register_system_shared_memory("out", out_key, X.nbytes)
    result = triton.infer(
        "add.add_common", add_inputs(module, inputs_shared), outputs=[requested(module, output_shared)]
    )
    if output_shared:
        if module is triton_grpc:  # the output's raw entry is kept, empty, so that indexes line up
            assert list(result.get_response().raw_output_contents) == [b""]
        else:
            assert "data" not in result.get_output("y")
        np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, [2, 2, 2]), X * 3)
    else:
        np.testing.assert_array_equal(result.as_numpy("y"), X * 3)
    output = result.get_output("y")
    shape = list(output.shape) if module is triton_grpc else output["shape"]
    assert shape == [2, 2, 2]


def test_status_and_unregister(client, regions):
    triton, module = client
    key, _ = regions(64)
    triton.register_system_shared_memory("a", key, 32)
    triton.register_system_shared_memory("b", key, 16, offset=32)
    status = triton.get_system_shared_memory_status()
    if module is triton_grpc:
        found = {name: (r.key, r.offset, r.byte_size) for name, r in status.regions.items()}
    else:
        found = {r["name"]: (r["key"], r["offset"], r["byte_size"]) for r in status}
    assert found == {"a": (key, 0, 32), "b": (key, 32, 16)}
    triton.unregister_system_shared_memory("a")
    one = triton.get_system_shared_memory_status("b")
    assert (list(one.regions) if module is triton_grpc else [r["name"] for r in one]) == ["b"]
    with pytest.raises(InferenceServerException, match="Unable to find system shared memory region: 'a'"):
        triton.get_system_shared_memory_status("a")
    triton.unregister_system_shared_memory()
    empty = triton.get_system_shared_memory_status()
    assert (len(empty.regions) if module is triton_grpc else len(empty)) == 0
    triton.unregister_system_shared_memory("never-registered")  # no error, as in Triton


def test_cuda_shared_memory_is_answered_not_offered(client):
    triton, module = client
    status = triton.get_cuda_shared_memory_status()
    assert (len(status.regions) if module is triton_grpc else len(status)) == 0
    triton.unregister_cuda_shared_memory()
    with pytest.raises(InferenceServerException, match="CUDA shared memory is not supported by this server"):
        triton.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64)


def test_servers_started_without_it_refuse_client_shared_memory(shm_server, regions):
    key, _ = regions(64)
    disabled = (
        "client shared memory is disabled: start the server with allow_client_shm=True to use it "
        "(allow_client_shm: true in serving.yaml, or MINDSERVE_ALLOW_CLIENT_SHM=true)"
    )
    closed = triton_grpc.InferenceServerClient(shm_server.closed)
    with pytest.raises(InferenceServerException) as refused:
        closed.register_system_shared_memory("a", key, 64)
    assert refused.value.status() == "StatusCode.UNAVAILABLE" and disabled in refused.value.message()
    with pytest.raises(InferenceServerException, match=re.escape(disabled)):
        closed.infer("add.add_common", add_inputs(triton_grpc, True))
    reply = request(
        shm_server.closed_rest,
        "POST",
        "/v2/systemsharedmemory/region/a/register",
        {"key": key, "offset": 0, "byte_size": 64},
    )
    assert (reply.status, reply.json()) == (400, {"error": disabled})
    metadata = triton_grpc.InferenceServerClient(shm_server.closed).get_server_metadata()
    assert "system_shared_memory" not in metadata.extensions
    assert (
        "system_shared_memory"
        not in triton_http.InferenceServerClient(shm_server.closed_rest).get_server_metadata()["extensions"]
    )
    assert (
        "system_shared_memory" in triton_grpc.InferenceServerClient(shm_server.address).get_server_metadata().extensions
    )


BAD_KEY = (
    "the key names no shared memory the server may use: an shm_open name of a regular file in /dev/shm "
    "owned by the server's user or by an owner listed in client_shm_owners"
)


def _register_error(triton, name, key, size, offset=0) -> str:
    with pytest.raises(InferenceServerException) as refused:
        triton.register_system_shared_memory(name, key, size, offset=offset)
    return refused.value.message()


def test_hostile_keys_are_refused_without_being_repeated(client, regions, tmp_path):
    triton, _ = client
    key, _ = regions(64)
    bare = key[1:]
    own = f"/mindserve-{uuid.uuid4().hex}"
    with open(f"/dev/shm{own}", "wb") as f:
        f.write(b"\0" * 64)
    elsewhere = tmp_path / "secret"
    elsewhere.write_bytes(b"\0" * 64)
    link = f"/link-{uuid.uuid4().hex}"
    os.symlink(elsewhere, f"/dev/shm{link}")
    directory = f"/dir-{uuid.uuid4().hex}"
    os.mkdir(f"/dev/shm{directory}")
    try:
        for hostile in (
            own,
            f"/{own}",
            f"/dev/shm{key}",
            f"//{bare}",
            f"/../shm/{bare}",
            "..",
            "/",
            "",
            f"/missing-{uuid.uuid4().hex}",
            link,
            directory,
            str(elsewhere),
        ):
            message = _register_error(triton, "h", hostile, 8)
            assert BAD_KEY in message, hostile
            assert not (hostile.strip("/") and hostile.strip("/") in message), message
    finally:
        os.unlink(f"/dev/shm{own}")
        os.unlink(f"/dev/shm{link}")
        os.rmdir(f"/dev/shm{directory}")
    if os.geteuid() == 0:  # a file of another user (only root can make one here)
        os.chown(f"/dev/shm{key}", 12345, 12345)
        assert BAD_KEY in _register_error(triton, "h", key, 8)


def test_bad_sizes_duplicates_and_limits(client, regions):
    triton, module = client
    key, _ = regions(64)
    assert "shared memory region 'big': its file holds 64 bytes, less than offset 8 + byte_size 64" in _register_error(
        triton, "big", key, 64, offset=8
    )
    triton.register_system_shared_memory("a", key, 64)
    message = _register_error(triton, "a", key, 8)
    assert "shared memory region 'a' is already registered" in message
    if module is triton_grpc:
        with pytest.raises(InferenceServerException) as taken:
            triton.register_system_shared_memory("a", key, 8)
        assert taken.value.status() == "StatusCode.ALREADY_EXISTS"
        assert "should be a non-negative offset and a positive size" in _register_error(
            triton, "o", key, 8, offset=2**64 - 1
        )
    for k in range(63):
        triton.register_system_shared_memory(f"r{k}", key, 1, offset=k)
    assert (
        "64 shared memory regions are registered, the most this server takes: unregister one first"
        in _register_error(triton, "one-more", key, 1)
    )


def test_rest_registration_with_bad_values(shm_server, regions):
    key, _ = regions(64)
    for body in (
        {"key": key, "offset": -1, "byte_size": 8},
        {"key": key, "byte_size": "8"},
        {"key": 5},
        [key],
        {"key": key, "byte_size": 8, "extra": 1},
    ):
        reply = request(shm_server.rest, "POST", "/v2/systemsharedmemory/region/x/register", body)
        assert reply.status == 400, body
    assert request(shm_server.rest, "POST", "/v2/systemsharedmemory/unregister", None).status == 200


def _raw_infer(address, parameters: dict, raw: bool = False):
    request_ = oip.ModelInferRequest(model_name="add.add_common")
    for name in ("x1", "x2"):
        tensor = request_.inputs.add(name=name, datatype="FP32", shape=[2, 2, 2])
        for key, value in parameters.items():
            if isinstance(value, str):
                tensor.parameters[key].string_param = value
            elif isinstance(value, bool):
                tensor.parameters[key].bool_param = value
            else:
                tensor.parameters[key].int64_param = value
        if raw:
            request_.raw_input_contents.append(X.tobytes())
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=oip.ModelInferRequest.SerializeToString,
            response_deserializer=oip.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as refused:
            call(request_, timeout=30)
    return refused.value.code(), refused.value.details()


def test_tensors_that_name_regions_wrongly(shm_server, regions):
    triton = triton_grpc.InferenceServerClient(shm_server.address)
    triton.unregister_system_shared_memory()
    key, handle = regions(2 * X.nbytes)
    triton.register_system_shared_memory("in", key, 2 * X.nbytes)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert _raw_infer(shm_server.address, {"shared_memory_region": 5, "shared_memory_byte_size": 32}) == (
        invalid,
        "input x1: shared_memory_region should be a region's name, a string",
    )
    assert _raw_infer(shm_server.address, {"shared_memory_region": "in", "shared_memory_byte_size": True}) == (
        invalid,
        "input x1: shared_memory_byte_size should be an integer >= 0",
    )
    assert _raw_infer(
        shm_server.address, {"shared_memory_region": "in", "shared_memory_byte_size": 32, "shared_memory_offset": -3}
    ) == (invalid, "input x1: shared_memory_offset should be an integer >= 0")
    assert _raw_infer(shm_server.address, {"shared_memory_region": "nope", "shared_memory_byte_size": 32}) == (
        invalid,
        "Unable to find shared memory region: 'nope'",
    )
    assert _raw_infer(
        shm_server.address, {"shared_memory_region": "in", "shared_memory_byte_size": 32, "shared_memory_offset": 48}
    ) == (invalid, "input x1: [48, 48 + 32) reaches outside shared memory region 'in' of 64 bytes")
    assert _raw_infer(shm_server.address, {"shared_memory_region": "in", "shared_memory_byte_size": 16}) == (
        invalid,
        "Instances input x1 check failed, detail: Tensor check failed: input data size 16 invalid, shape "
        "[2, 2, 2] of kMSI_Float32 needs 32 bytes",
    )
    assert _raw_infer(shm_server.address, {"shared_memory_byte_size": 16}) == (
        invalid,
        "input x1: shared_memory_offset and shared_memory_byte_size need shared_memory_region",
    )
    code, details = _raw_infer(
        shm_server.address, {"shared_memory_region": "in", "shared_memory_byte_size": 32}, raw=True
    )
    assert (code, details) == (
        invalid,
        "raw_input_contents holds 2 entries for 0 inputs not in shared memory: it "
        "needs one per such input, in the order of inputs",
    )
    # an output region too small names the bytes needed
    out_key, _ = regions(16)
    triton.register_system_shared_memory("small", out_key, 16)
    with pytest.raises(InferenceServerException, match="output y needs 32 bytes, its shared_memory_byte_size is 16"):
        triton.infer(
            "add.add_common", add_inputs(triton_grpc, False), outputs=[requested(triton_grpc, True, "small", 16)]
        )
    # a file cut short after registration: a clear error, no crash
    shm.set_shared_memory_region(handle, [X, X])
    os.truncate(f"/dev/shm{key}", 8)
    with pytest.raises(InferenceServerException, match="no longer as large as it was registered"):
        triton.infer("add.add_common", add_inputs(triton_grpc, True))
    triton.unregister_system_shared_memory()
    one = np.ones((2, 2, 2), np.float32)
    inputs = [triton_grpc.InferInput(n, [2, 2, 2], "FP32") for n in ("x1", "x2")]
    for tensor in inputs:
        tensor.set_data_from_numpy(one)
    np.testing.assert_array_equal(triton.infer("add.add_common", inputs).as_numpy("y"), one * 2)


def test_unregistering_a_region_in_use_takes_effect_when_the_request_finishes(shm_server, regions):
    triton = triton_grpc.InferenceServerClient(shm_server.address)
    triton.unregister_system_shared_memory()
    key, handle = regions(16)
    shm.set_shared_memory_region(handle, [np.array([1.5, 2.5], np.float32)])
    triton.register_system_shared_memory("io", key, 16)
    x = triton_grpc.InferInput("x", [1, 2], "FP32")
    x.set_shared_memory("io", 8)
    y = triton_grpc.InferRequestedOutput("y")
    y.set_shared_memory("io", 8, offset=8)
    open(shm_server.hold, "w").close()
    outcome: dict[str, object] = {}
    call = threading.Thread(
        target=lambda: outcome.update(
            result=triton_grpc.InferenceServerClient(shm_server.address).infer("held.plus_one", [x], outputs=[y])
        )
    )
    try:
        call.start()
        wait_until(lambda: os.path.exists(shm_server.started), "the request to run", 30)
        triton.unregister_system_shared_memory("io")
        assert len(triton.get_system_shared_memory_status().regions) == 0
    finally:
        os.unlink(shm_server.hold)
        call.join(30)
        os.unlink(shm_server.started)
    assert "result" in outcome  # the request that held the region finished with it
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [4])[2:], [2.5, 3.5])
    with pytest.raises(InferenceServerException, match="Unable to find shared memory region: 'io'"):
        triton.infer("held.plus_one", [x], outputs=[y])
