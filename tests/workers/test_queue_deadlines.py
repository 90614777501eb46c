"""The queue honours what the client said: work whose client has gone (a gRPC deadline passed, a call cancelled,
KServe's ``timeout`` parameter expired, a REST client disconnected) is dropped before it runs, while a held
request keeps the worker busy; the client gets DEADLINE_EXCEEDED (504 over REST), the dropped work is counted with
its reason, and a stage that logs every instance it runs proves that it never ran."""

from __future__ import annotations

import json
import os
import socket
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from mindserve._proto import ms_service_pb2 as pb
from mindserve.client import Client
from mindserve.client._client import PREDICT, build_request
from support import servables
from support.metrics import scrape, value
from support.processes import free_port, start_server, wait_until
from support.rest import request as http_request

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

GATE_CONFIG = """
import os
import time
from mindserve.server import register

HERE = os.path.dirname(os.path.abspath(__file__))


def gate(x):
    with open(os.path.join(HERE, "ran.log"), "a") as log:  # every instance that runs, in order
        log.write(f"{int(x[0])}\\n")
    while os.path.exists(os.path.join(HERE, "hold")):  # the test holds the worker here
        time.sleep(0.01)
    return x


@register.register_method(output_names=["y"])
def pass_through(x):
    return register.add_stage(gate, x, outputs_count=1)
"""


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deadlines")
    root = str(tmp / "servables")
    folder = servables.write(root, "gate", GATE_CONFIG)
    os.makedirs(os.path.join(folder, "1"))
    bounded = servables.write(root, "bounded", GATE_CONFIG)  # the same, with max_queue_delay_ms
    os.makedirs(os.path.join(bounded, "1"))
    address, rest, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp,
        f"""
        server.start_servables([server.ServableStartConfig({root!r}, "gate", device_ids=0, max_batch_size=1),
                                server.ServableStartConfig({root!r}, "bounded", device_ids=0, max_batch_size=1,
                                                           max_queue_delay_ms=300)])
        server.start_grpc_server({address!r})
        server.start_restful_server({rest!r})
        server.start_metrics_server({metrics!r})
    """,
        address,
    )
    server.folder, server.rest, server.metrics = folder, rest, metrics
    server.bounded = bounded
    yield server
    server.stop()


DROPPED = (
    "Request servable(gate) method(pass_through) , the request's deadline passed before its answer was "
    "ready (work not started by then is dropped)"
)


def ran(server) -> list:
    path = os.path.join(server.folder, "ran.log")
    return open(path).read().split() if os.path.exists(path) else []


class Held:
    """The worker held by a first request (``marker``), until ``release``."""

    def __init__(self, server, marker: int):
        self.server, self.marker = server, marker
        self.hold = os.path.join(server.folder, "hold")
        open(self.hold, "w").close()
        self.first = Client(server.address, "gate", "pass_through").infer_async({"x": np.array([marker], np.int64)})
        wait_until(lambda: str(marker) in ran(server), "the first request to hold the worker", 30)

    def release(self) -> None:
        os.unlink(self.hold)
        assert self.first.result(30)[0]["y"].tolist() == [self.marker]


def x(marker: int) -> dict:
    return {"x": np.array([marker], np.int64)}


def failures(server, protocol: str, reason: str) -> float:
    return value(
        scrape(server.metrics),
        "mindserve_request_failure_total",
        servable="gate",
        version="1",
        method="pass_through",
        protocol=protocol,
        reason=reason,
    )


def test_a_request_whose_grpc_deadline_passes_in_the_queue_never_runs(gated):
    held = Held(gated, 10)
    try:
        late = Client(gated.address, "gate", "pass_through").infer(x(11), timeout=0.5)
        # the server's deadline is the call's (what remained of it on arrival): it answers at that moment, and
        # its answer races the client's own timer by the loopback's latency
        assert late in ({"error": DROPPED}, {"error": "Grpc Error, (4, 'deadline exceeded'), Deadline Exceeded"})
    finally:
        held.release()
    after = Client(gated.address, "gate", "pass_through").infer(x(12))
    assert after[0]["y"].tolist() == [12]
    assert ran(gated)[-2:] == ["10", "12"] and "11" not in ran(gated)


def test_a_cancelled_call_is_dropped_from_the_queue(gated):
    cancelled = failures(gated, "ms", "cancelled")
    held = Held(gated, 20)
    channel = grpc.insecure_channel(gated.address)
    try:
        predict = channel.unary_unary(
            PREDICT,
            request_serializer=pb.PredictRequest.SerializeToString,
            response_deserializer=pb.PredictReply.FromString,
        )
        request, _ = build_request("gate", "pass_through", 0, x(21), {})
        call = predict.future(request)
        wait_until(
            lambda: value(scrape(gated.metrics), "mindserve_pending_requests", servable="gate", version="1") == 2,
            "the second request to queue behind the first",
            30,
        )
        assert call.cancel()
        # the server has taken the cancel (and marked the queued job) once it counts the request as cancelled
        wait_until(lambda: failures(gated, "ms", "cancelled") == cancelled + 1, "the cancel to reach the server", 30)
    finally:
        held.release()
        channel.close()
    assert Client(gated.address, "gate", "pass_through").infer(x(22))[0]["y"].tolist() == [22]
    assert ran(gated)[-2:] == ["20", "22"] and "21" not in ran(gated)


def test_kserve_timeout_parameter_answers_deadline_exceeded_and_drops_the_work(gated):
    before = failures(gated, "v2", "deadline")
    held = Held(gated, 30)
    try:
        triton = triton_grpc.InferenceServerClient(gated.address)
        tensor = triton_grpc.InferInput("x", [1, 1], "INT64")
        tensor.set_data_from_numpy(np.array([[31]], np.int64))
        began = time.monotonic()
        with pytest.raises(InferenceServerException) as late:
            triton.infer("gate", [tensor], timeout=300_000)  # microseconds, as tritonclient sends it
        waited = time.monotonic() - began
        assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert late.value.message() == DROPPED
        assert waited < 20  # answered at its deadline, not when the worker frees (released below)
        reply = http_request(
            gated.rest,
            "POST",
            "/v2/models/gate/infer",
            {
                "parameters": {"timeout": 300_000},
                "inputs": [{"name": "x", "shape": [1, 1], "datatype": "INT64", "data": [32]}],
            },
        )
        assert (reply.status, reply.json()) == (504, {"error": DROPPED})
    finally:
        held.release()
    assert Client(gated.address, "gate", "pass_through").infer(x(33))[0]["y"].tolist() == [33]
    assert ran(gated)[-2:] == ["30", "33"] and "31" not in ran(gated) and "32" not in ran(gated)
    assert failures(gated, "v2", "deadline") - before == 1
    assert failures(gated, "rest_v2", "deadline") >= 1


@pytest.mark.parametrize("timeout", [-1, 1.5, "soon", True])
def test_a_bad_timeout_parameter_is_named(gated, timeout):
    reply = http_request(
        gated.rest,
        "POST",
        "/v2/models/gate/infer",
        {
            "parameters": {"timeout": timeout},
            "inputs": [{"name": "x", "shape": [1, 1], "datatype": "INT64", "data": [1]}],
        },
    )
    assert (reply.status, reply.json()) == (
        400,
        {"error": f"The request parameter 'timeout' should be a non-negative integer of microseconds, got {timeout!r}"},
    )


def test_a_rest_client_that_disconnects_has_its_queued_work_dropped(gated):
    cancelled = failures(gated, "rest_v2", "cancelled")
    held = Held(gated, 40)
    try:
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "INT64", "data": [41]}]}).encode()
        host, port = gated.rest.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as client:
            client.sendall(
                b"POST /v2/models/gate/infer HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                b"application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            wait_until(
                lambda: value(scrape(gated.metrics), "mindserve_pending_requests", servable="gate", version="1") == 2,
                "the REST request to queue behind the first",
                30,
            )
        # the connection is closed: the server cancels the request's handler and counts it
        wait_until(lambda: failures(gated, "rest_v2", "cancelled") == cancelled + 1, "the disconnect to count", 30)
    finally:
        held.release()
    assert Client(gated.address, "gate", "pass_through").infer(x(42))[0]["y"].tolist() == [42]
    assert ran(gated)[-2:] == ["40", "42"] and "41" not in ran(gated)


def test_work_queued_past_the_servables_max_queue_delay_is_answered_unstarted(gated):
    log = os.path.join(gated.bounded, "ran.log")
    hold = os.path.join(gated.bounded, "hold")
    open(hold, "w").close()
    client = Client(gated.address, "bounded", "pass_through")
    try:
        first = client.infer_async(x(50))
        wait_until(lambda: os.path.exists(log) and "50" in open(log).read().split(), "the first to hold", 30)
        second = client.infer_async(x(51))  # no deadline of its own: the servable's bound applies
        time.sleep(0.6)  # (past the 300 ms it may wait)
    finally:
        os.unlink(hold)
    assert first.result(30)[0]["y"].tolist() == [50]
    assert second.result(30) == {
        "error": "the request's deadline, or the servable's max_queue_delay_ms, passed before its work started"
    }
    assert client.infer(x(52))[0]["y"].tolist() == [52]  # (a request that waits less runs)
    assert open(log).read().split() == ["50", "52"]


@pytest.mark.parametrize("delay", [-1, 3_600_001, "100", True])
def test_max_queue_delay_ms_out_of_range_is_refused_by_name(delay):
    from mindserve.server import ServableStartConfig

    with pytest.raises(RuntimeError) as refused:
        ServableStartConfig("servables", "add", max_queue_delay_ms=delay)
    assert (
        str(refused.value)
        == f"Parameter 'max_queue_delay_ms' should be a number in [0, 3600000], but actually {delay!r}"
    )
