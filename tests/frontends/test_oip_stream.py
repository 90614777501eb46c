"""ModelStreamInfer (KServe/Triton's bidirectional stream) as tritonclient.grpc streams: responses in request
order with their ids, in-band errors that leave the stream going, Triton's error mode that ends it, the
outstanding responses after a half-close, a bound on requests in flight per stream, and the metrics."""

from __future__ import annotations

import os
import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from support import servables
from support.messages import grpc_inference as oip
from support.metrics import pending, scrape, value
from support.paths import BUNDLED_SERVABLES
from support.processes import free_addresses, start_server, wait_until

pytestmark = pytest.mark.server

HELD_CONFIG = """
import os
import time
from mindserve.server import register

HERE = os.path.dirname(__file__)


def held(x):
    deadline = time.monotonic() + 60
    while os.path.exists(os.path.join(HERE, "hold")) and time.monotonic() < deadline:
        time.sleep(0.01)
    return x


@register.register_method(output_names=["y"])
def echo(x):
    return register.add_stage(held, x, outputs_count=1)
"""
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    servables.write(str(root / "servables"), "held", HELD_CONFIG)
    address, metrics = free_addresses(2)
    process = start_server(
        root,
        f"""
        server.start_servables([server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0),
                                server.ServableStartConfig({str(root / "servables")!r}, "held", device_ids=0)])
        server.start_grpc_server({address!r})
        server.start_metrics_server({metrics!r})
    """,
        address,
    )
    process.metrics = metrics
    process.hold = root / "servables" / "held" / "hold"
    yield process
    process.stop()


def add_inputs(value: float, shape=(1, 2, 2)) -> list:
    tensors = [triton_grpc.InferInput(name, list(shape), "FP32") for name in ("x1", "x2")]
    for tensor in tensors:
        tensor.set_data_from_numpy(np.full(shape, value, np.float32))
    return tensors


def add_request(value: float, request_id: str, shape=(1, 2, 2)):
    request = oip.ModelInferRequest(model_name="add.add_common", id=request_id)
    for name in ("x1", "x2"):
        request.inputs.add(name=name, datatype="FP32", shape=list(shape))
        request.raw_input_contents.append(np.full(shape, value, np.float32).tobytes())
    return request


def raw_stream(address: str, requests, metadata=()):
    channel = grpc.insecure_channel(address)
    call = channel.stream_stream(
        STREAM,
        request_serializer=lambda r: r if isinstance(r, bytes) else r.SerializeToString(),
        response_deserializer=oip.ModelStreamInferResponse.FromString,
    )
    return channel, call(iter(requests), metadata=metadata, timeout=60)


def test_tritonclient_stream_answers_in_order_with_ids_and_in_band_errors(stream_server):
    client = triton_grpc.InferenceServerClient(stream_server.address)
    answers: queue.Queue = queue.Queue()
    client.start_stream(lambda result, error: answers.put((result, error)))
    try:
        for i in range(40):
            shape = (1, 3, 3) if i == 7 else (1, 2, 2)
            client.async_stream_infer("add.add_common", add_inputs(float(i), shape), request_id=f"r{i}")
    finally:
        client.stop_stream()  # half-close: every outstanding answer still comes
    got = [answers.get(timeout=30) for _ in range(40)]
    assert answers.empty()
    for i, (result, error) in enumerate(got):
        if i == 7:
            assert result is None
            assert str(error) == (
                "Given model input 0 size 36 not match the size 16 defined in model: input 'x1' of "
                "model tensor_add.onnx takes float32 [2, 2], given float32 [3, 3]"
            )
            continue
        assert error is None
        assert result.get_response().id == f"r{i}"
        np.testing.assert_array_equal(result.as_numpy("y"), np.full((1, 2, 2), 2.0 * i, np.float32))


def test_an_in_band_error_names_the_model_and_the_request_id(stream_server):
    channel, answers = raw_stream(
        stream_server.address, [add_request(1, "a"), add_request(1, "b", (1, 3)), b"\xff\xff", add_request(2, "c")]
    )
    with channel:
        got = list(answers)
    assert [a.infer_response.id for a in got] == ["a", "b", "", "c"]
    assert got[0].error_message == "" and got[3].error_message == ""
    assert got[1].error_message.startswith("Given model input 0 size 12 not match the size 16")
    assert got[1].infer_response.model_name == "add.add_common"
    assert got[2].error_message == (
        "the request is not a valid ModelInferRequest message: Error parsing message "
        "with type 'inference.ModelInferRequest'"
    )
    assert np.frombuffer(got[3].infer_response.raw_output_contents[0], np.float32).tolist() == [4.0] * 4


def test_triton_error_mode_ends_the_stream_at_the_first_error_with_its_status(stream_server):
    requests = [add_request(1, "a"), add_request(1, "b", (1, 3)), add_request(1, "c")]
    channel, answers = raw_stream(stream_server.address, requests, metadata=(("triton_grpc_error", "true"),))
    got = []
    with channel, pytest.raises(grpc.RpcError) as ended:
        for answer in answers:
            got.append(answer)
    assert [a.infer_response.id for a in got] == ["a"]
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ended.value.details().startswith("Given model input 0 size 12 not match the size 16")


def test_a_stream_runs_at_most_64_requests_at_once_and_answers_all_after_half_close(stream_server):
    request = oip.ModelInferRequest(model_name="held", id="h")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.ones((1, 2), np.float32).tobytes())
    stream_server.hold.write_text("")
    try:
        channel, answers = raw_stream(stream_server.address, [request] * 200)
        # the worker is held: the stream has started as many requests as it may, and reads no more
        wait_until(lambda: pending(stream_server.metrics, "held") == 64, "64 requests of the stream in flight", 30)
        assert pending(stream_server.metrics, "held") == 64
    finally:
        os.unlink(stream_server.hold)
    with channel:
        got = list(answers)  # the client half-closed after its 200 requests: all 200 answers, then OK
    assert len(got) == 200 and all(a.error_message == "" and a.infer_response.id == "h" for a in got)


def test_stream_requests_are_counted_and_the_stream_is_advertised(stream_server):
    metadata = triton_grpc.InferenceServerClient(stream_server.address).get_server_metadata()
    assert list(metadata.extensions) == ["statistics", "model_stream_infer"]
    labels = dict(servable="add", version="1", method="add_common", protocol="v2_stream")
    before = value(scrape(stream_server.metrics), "mindserve_request_success_total", **labels)
    channel, answers = raw_stream(stream_server.address, [add_request(1, "m")] * 3)
    with channel:
        assert len(list(answers)) == 3
    assert value(scrape(stream_server.metrics), "mindserve_request_success_total", **labels) - before == 3
