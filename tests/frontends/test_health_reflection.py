"""Standard gRPC health checking (grpc.health.v1) following worker liveness, and server reflection describing
every service on the port, through the registry's own client-side helpers."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from support import servables
from support.paths import BUNDLED_SERVABLES
from support.processes import ServerProcess, free_port, start_server, worker_pids

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

SERVICES = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "inference.GRPCInferenceService",
    "io.seldon.api.rpc.Classifier",
    "microsoft.azure.media.live_video_analytics.extensibility.grpc.v1.MediaGraphExtension",
    "mindspore.serving.proto.MSService",
]


@pytest.fixture(scope="module")
def health_server(servable_dir, tmp_path_factory) -> Iterator[ServerProcess]:
    """add (bundled), versioned (versions 1 and 2) and hold (its restarted worker stays down while the hold file
    exists), one worker each."""
    tmp = tmp_path_factory.mktemp("health_server")
    root = servables.make_probe_and_hold(str(tmp_path_factory.mktemp("health_servables")))
    address = f"127.0.0.1:{free_port()}"
    hold_file = str(tmp / "hold")
    server = start_server(
        tmp,
        f"""
        import os
        os.environ["MINDSERVE_TEST_HOLD_FILE"] = {hold_file!r}
        server.start_servables([
            server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0),
            server.ServableStartConfig({servable_dir!r}, "versioned", device_ids=0, version_number=1),
            server.ServableStartConfig({servable_dir!r}, "versioned", device_ids=0, version_number=2),
            server.ServableStartConfig({root!r}, "hold", device_ids=0)])
        server.start_grpc_server({address!r})
    """,
        address,
        timeout=120,
    )
    server.hold_file = hold_file
    yield server
    if os.path.exists(hold_file):
        os.unlink(hold_file)
    server.stop()


@pytest.fixture(scope="module")
def channel(health_server):
    with grpc.insecure_channel(health_server.address) as ch:
        yield ch


def check(channel: grpc.Channel, service: str) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status


ALL_NAMES = [
    "",
    "liveness",
    "add",
    "add.add_common",
    "add.add_cast",
    "versioned",
    "versioned.predict",
    "hold",
    "hold.echo",
    *SERVICES,
]


@pytest.mark.parametrize("service", ALL_NAMES)
def test_check_serving(channel, service):
    assert check(channel, service) == SERVING


@pytest.mark.parametrize("service", ["nope", "add.nope", "add.add_common.x", "versioned/1"])
def test_check_unknown_service(channel, service):
    with pytest.raises(grpc.RpcError) as info:
        check(channel, service)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == (
        f"unknown service '{service}': health is kept for '' (the server), "
        f"'liveness', the gRPC services, each servable and each 'servable.method'"
    )


@pytest.mark.parametrize("rpc", ["Check", "Watch"])
def test_malformed_health_request_is_invalid_argument(channel, rpc):
    data = health_pb2.HealthCheckRequest(service="add").SerializeToString() + b"\x10\x01"  # field 2: unknown
    call = channel.unary_unary if rpc == "Check" else channel.unary_stream
    with pytest.raises(grpc.RpcError) as info:
        result = call(f"/grpc.health.v1.Health/{rpc}")(data, timeout=30)
        if rpc == "Watch":
            next(result)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        "the request is not a valid HealthCheckRequest message: HealthCheckRequest: field "
        "number 2 (wire type 0) has an unknown number or a wrong wire type"
    )


def worker_pid(server: ServerProcess, name: str) -> int:
    pids = worker_pids(server, name)
    if not pids:
        raise AssertionError(f"no worker of {name}")
    return pids[0]


def test_health_follows_worker_liveness(health_server, channel):
    stub = health_pb2_grpc.HealthStub(channel)
    # Watch streams, bounded by their deadline: each answers the current status first, then every change
    watch_hold = stub.Watch(health_pb2.HealthCheckRequest(service="hold"), timeout=120)
    watch_server = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=120)
    assert next(watch_hold).status == SERVING
    assert next(watch_server).status == SERVING
    old = worker_pid(health_server, "hold")
    open(health_server.hold_file, "w").close()
    try:
        os.kill(old, signal.SIGKILL)
        assert next(watch_hold).status == NOT_SERVING
        assert next(watch_server).status == NOT_SERVING
        assert check(channel, "") == NOT_SERVING
        assert check(channel, "hold") == NOT_SERVING
        assert check(channel, "hold.echo") == NOT_SERVING
        assert check(channel, "inference.GRPCInferenceService") == NOT_SERVING
        assert check(channel, "liveness") == SERVING  # the server restarts its worker itself
        # the other servables still have their workers
        assert check(channel, "add") == SERVING
        assert check(channel, "versioned.predict") == SERVING
    finally:
        os.unlink(health_server.hold_file)
    assert next(watch_hold).status == SERVING
    assert next(watch_server).status == SERVING
    assert check(channel, "") == SERVING
    assert check(channel, "hold.echo") == SERVING
    assert worker_pid(health_server, "hold") != old
    watch_hold.cancel()
    watch_server.cancel()


# ---- reflection --------------------------------------------------------------------------------------------------


def test_reflection_lists_the_services(channel):
    assert ProtoReflectionDescriptorDatabase(channel).get_services() == SERVICES


def test_reflection_describes_the_services(channel):
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    oip = pool.FindServiceByName("inference.GRPCInferenceService")
    assert [(m.name, m.input_type.full_name, m.output_type.full_name) for m in oip.methods] == [
        (rpc, f"inference.{rpc}Request", f"inference.{rpc}Response")
        for rpc in (
            "ServerLive",
            "ServerReady",
            "ModelReady",
            "ServerMetadata",
            "ModelMetadata",
            "ModelInfer",
            "ModelStatistics",
        )
    ] + [("ModelStreamInfer", "inference.ModelInferRequest", "inference.ModelStreamInferResponse")] + [
        (
            f"{kind}SharedMemory{rpc}",
            f"inference.{kind}SharedMemory{rpc}Request",
            f"inference.{kind}SharedMemory{rpc}Response",
        )
        for kind in ("System", "Cuda")
        for rpc in ("Status", "Register", "Unregister")
    ]
    infer_request = pool.FindMessageTypeByName("inference.ModelInferRequest")
    assert [(f.name, f.number) for f in infer_request.fields] == [
        ("model_name", 1),
        ("model_version", 2),
        ("id", 3),
        ("parameters", 4),
        ("inputs", 5),
        ("outputs", 6),
        ("raw_input_contents", 7),
    ]
    infer_response = pool.FindMessageTypeByName("inference.ModelInferResponse")
    assert infer_response.fields_by_name["raw_output_contents"].number == 6
    seldon = pool.FindServiceByName("io.seldon.api.rpc.Classifier")
    assert [(m.name, m.input_type.full_name, m.output_type.full_name) for m in seldon.methods] == [
        ("Predict", "io.seldon.api.rpc.ClassificationRequest", "io.seldon.api.rpc.ClassificationReply")
    ]
    predict = pool.FindServiceByName("mindspore.serving.proto.MSService").methods_by_name["Predict"]
    assert predict.input_type.full_name == "mindspore.serving.proto.PredictRequest"
    assert predict.output_type.full_name == "mindspore.serving.proto.PredictReply"
    health = pool.FindServiceByName("grpc.health.v1.Health")
    assert [m.name for m in health.methods] == ["Check", "Watch"]
    assert pool.FindServiceByName("grpc.reflection.v1alpha.ServerReflection").methods[0].name == "ServerReflectionInfo"


def test_a_call_built_from_reflection_alone(channel):
    """As grpcurl does: message classes made from the reflected descriptors call the service."""
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    request_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelReadyRequest"))
    response_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelReadyResponse"))
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelReady",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    assert call(request_class(name="versioned", version="2"), timeout=30).ready is True
    assert call(request_class(name="versioned", version="3"), timeout=30).ready is False


def test_malformed_reflection_request_is_invalid_argument(channel):
    call = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    with pytest.raises(grpc.RpcError) as info:
        list(call(iter([b"\x48\x01"]), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        "the request is not a valid ServerReflectionRequest message: "
        "ServerReflectionRequest: field number 9 (wire type 0) has an unknown number or a "
        "wrong wire type"
    )
