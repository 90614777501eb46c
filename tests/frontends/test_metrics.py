"""Prometheus metrics: after known traffic through every door (MSService, the Open Inference Protocol over gRPC
and REST, MindSpore's REST form), /metrics counts exactly those requests, instances, executions and failures by
reason; histograms agree with the counters; a worker killed with SIGKILL is a restart; label values are only
registered names or "unknown"."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from mindserve.client import Client
from support import model_files, servables
from support.metrics import scrape, scrape_fresh, value
from support.processes import free_addresses, free_port, start_server, wait_until, worker_pids
from support.rest import request, unix_request


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (urllib has none)."""

    def __init__(self, path: str):
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self._path)


pytestmark = pytest.mark.server

METER_CONFIG = """
import os
import time

import numpy as np
from mindserve.server import register

model = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=True)


def scale(x1, x2):
    return x1 * 2, x2


def negate(y):
    return -y


def fail(x1, x2):
    raise ValueError("stage fails on purpose")


def check(x1, x2):
    if x1.sum() < 0:
        raise register.InputError("x1 must not be negative")
    return x1, x2


def hold(x):
    path = os.environ["METER_HOLD_FILE"]
    open(path + ".started", "w").close()
    deadline = time.monotonic() + 60
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return x


@register.register_method(output_names=["y"])
def add(x1, x2):
    return register.add_stage(model, x1, x2, outputs_count=1)


@register.register_method(output_names=["y"])
def pipeline(x1, x2):
    a, b = register.add_stage(scale, x1, x2, outputs_count=2)
    y = register.add_stage(model, a, b, outputs_count=1)
    return register.add_stage(negate, y, outputs_count=1)


@register.register_method(output_names=["y"])
def broken(x1, x2):
    return register.add_stage(fail, x1, x2, outputs_count=1)


@register.register_method(output_names=["y"])
def checked(x1, x2):
    a, b = register.add_stage(check, x1, x2, outputs_count=2)
    return register.add_stage(model, a, b, outputs_count=1)


@register.register_method(output_names=["y"])
def held(x):
    return register.add_stage(hold, x, outputs_count=1)
"""

ONES = np.ones((2,), np.float32)


def model_labels(method: str, protocol: str | None = None, servable: str = "meter", version: str = "1", **more) -> dict:
    labels = {"servable": servable, "version": version, "method": method, **more}
    if protocol is not None:
        labels["protocol"] = protocol
    return labels


@pytest.fixture(scope="module")
def meter(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    path = servables.write(str(root), "meter", METER_CONFIG)
    os.makedirs(os.path.join(path, "1"))
    model_files.add_model(os.path.join(path, "1", "add.onnx"))
    hold = root / "hold"
    os.environ["METER_HOLD_FILE"] = str(hold)  # the server process inherits it
    grpc_address, guarded, rest, metrics = free_addresses(4)
    process = start_server(
        root,
        f"""
        server.start_servables(server.ServableStartConfig({str(root)!r}, "meter", device_ids=0))
        server.context.set_max_enqueued_requests(3)
        server.context.set_worker_restart_wait(0)
        server.start_grpc_server({grpc_address!r})
        server.start_grpc_server({guarded!r},
                                 access=server.AccessConfig(restricted={{"inference": ("infer-key", "k")}}))
        server.start_restful_server({rest!r})
        server.start_metrics_server({metrics!r})
    """,
        grpc_address,
    )
    process.rest, process.guarded, process.metrics, process.hold = rest, guarded, metrics, hold
    yield process
    process.stop()


def test_requests_are_counted_by_door_method_and_outcome(meter):
    before = scrape(meter.metrics)
    client = Client(meter.address, "meter", "add")
    for _ in range(3):
        assert client.infer([{"x1": ONES, "x2": ONES}] * 4)[0]["y"].tolist() == [2.0, 2.0]
    pipeline = Client(meter.address, "meter", "pipeline").infer({"x1": ONES, "x2": ONES})
    assert pipeline[0]["y"].tolist() == [-3.0, -3.0]
    assert "error" in Client(meter.address, "meter", "broken").infer({"x1": ONES, "x2": ONES})
    assert "error" in Client(meter.address, "meter", "checked").infer({"x1": -ONES, "x2": ONES})
    assert "error" in Client(meter.address, "nosuch", "add").infer({"x1": ONES, "x2": ONES})

    triton = triton_grpc.InferenceServerClient(meter.address)
    inputs = [triton_grpc.InferInput(n, [1, 2], "FP32") for n in ("x1", "x2")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.ones((1, 2), np.float32))
    for _ in range(2):
        triton.infer("meter.add", inputs)
    with pytest.raises(Exception, match="not found"):
        triton.infer("elsewhere", inputs)
    reply = request(meter.rest, "POST", "/model/meter:add", {"instances": [{"x1": [1.0, 1.0], "x2": [1.0, 1.0]}]})
    assert reply.status == 200
    body = {"inputs": [{"name": n, "shape": [1, 2], "datatype": "FP32", "data": [1.0, 1.0]} for n in ("x1", "x2")]}
    assert request(meter.rest, "POST", "/v2/models/meter.add/infer", body).status == 200
    assert request(meter.rest, "POST", "/v2/models/meter.add/infer", {"inputs": "no"}).status == 400

    after = scrape_fresh(meter.metrics)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    success, failure = "mindserve_request_success_total", "mindserve_request_failure_total"
    assert delta(success, **model_labels("add", "ms")) == 3
    assert delta(success, **model_labels("pipeline", "ms")) == 1
    assert delta(failure, **model_labels("broken", "ms", reason="stage_failed")) == 1
    assert delta(failure, **model_labels("checked", "ms", reason="invalid_input")) == 1
    unknown = model_labels("unknown", servable="unknown", version="unknown")
    assert delta(failure, **unknown, protocol="ms", reason="not_found") == 1
    assert delta(success, **model_labels("add", "v2")) == 2
    assert delta(failure, **unknown, protocol="v2", reason="not_found") == 1
    assert delta(success, **model_labels("add", "rest_ms")) == 1
    assert delta(success, **model_labels("add", "rest_v2")) == 1
    # a body that names no tensors is refused before any model is resolved
    assert delta(failure, **unknown, protocol="rest_v2", reason="invalid_input") == 1

    # every request is one observation of the duration histogram of its series
    for method, protocol, count in (("add", "ms", 3), ("add", "v2", 2), ("pipeline", "ms", 1)):
        assert delta("mindserve_request_duration_seconds_count", **model_labels(method, protocol)) == count
        assert delta("mindserve_request_duration_seconds_bucket", **model_labels(method, protocol, le="+Inf")) == count

    # instances and executions: 3 x 4 + 2 + 1 + 1 instances of add (one execution each: nothing batches them)
    assert delta("mindserve_inference_count_total", **model_labels("add")) == 16
    assert delta("mindserve_execution_count_total", **model_labels("add", device="0")) == 7
    assert delta("mindserve_batch_size_count", **model_labels("add")) == 7
    assert delta("mindserve_batch_size_sum", **model_labels("add")) == 16
    assert delta("mindserve_batch_size_bucket", **model_labels("add", le="4.0")) == 7
    assert delta("mindserve_batch_size_bucket", **model_labels("add", le="2.0")) == 4
    assert delta("mindserve_queue_duration_seconds_count", **model_labels("add")) == 7
    # each stage by position and kind, once per execution
    assert delta("mindserve_stage_duration_seconds_count", **model_labels("add", stage="1:model")) == 7
    for stage in ("1:python", "2:model", "3:python"):
        assert delta("mindserve_stage_duration_seconds_count", **model_labels("pipeline", stage=stage)) == 1
    assert delta("mindserve_stage_duration_seconds_count", **model_labels("broken", stage="1:python")) == 1
    # a failed stage ends the execution: the model stage after it never ran
    assert delta("mindserve_stage_duration_seconds_count", **model_labels("checked", stage="2:model")) == 0

    assert value(after, "mindserve_build_info", version="0.1.0") == 1
    assert value(after, "mindserve_worker_up", servable="meter", version="1", device="0") == 1
    # nothing a client wrote became a label value
    assert not [key for key in after if any(v in ("nosuch", "elsewhere") for _, v in key[1])]


def test_refused_requests_count_as_unauthenticated(meter):
    before = scrape(meter.metrics)
    refused = Client(meter.guarded, "meter", "add").infer({"x1": ONES, "x2": ONES})
    assert refused == {
        "error": "Grpc Error, (16, 'unauthenticated'), This API is restricted, expecting header 'infer-key'"
    }
    served = Client(meter.guarded, "meter", "add", headers={"infer-key": "k"}).infer({"x1": ONES, "x2": ONES})
    assert served[0]["y"].tolist() == [2.0, 2.0]
    after = scrape(meter.metrics)
    labels = dict(servable="unknown", version="unknown", method="unknown", protocol="ms", reason="unauthenticated")
    assert (
        value(after, "mindserve_request_failure_total", **labels)
        - value(before, "mindserve_request_failure_total", **labels)
        == 1
    )


def _wait_for_file(path, what: str) -> None:
    wait_until(lambda: os.path.exists(path), what, 60)


def test_queue_full_and_cancelled_requests_and_pending_gauge(meter):
    before = scrape(meter.metrics)
    meter.hold.write_text("")
    started = f"{meter.hold}.started"
    held = Client(meter.address, "meter", "held")
    try:
        first = held.infer_async({"x": ONES})
        _wait_for_file(started, "the first held request to run")
        second = held.infer_async({"x": ONES})
        # a request whose client gives up (its deadline passes): the server counts it (see below)
        assert held.infer({"x": ONES}, timeout=0.5) in (
            {"error": "Grpc Error, (4, 'deadline exceeded'), Deadline Exceeded"},
            {
                "error": "Request servable(meter) method(held) , the request's deadline passed before its answer was "
                "ready (work not started by then is dropped)"
            },
        )
        third = held.infer_async({"x": ONES})
        wait_until(
            lambda: value(scrape(meter.metrics), "mindserve_pending_requests", servable="meter", version="1") == 3,
            "three requests pending",
            30,
        )
        assert "enqueued requests count exceeds the limit 3" in held.infer({"x": ONES})["error"]
    finally:
        os.unlink(meter.hold)
    for call in (first, second, third):
        assert call.result()[0]["y"].tolist() == [1.0, 1.0]
    os.unlink(started)
    after = scrape(meter.metrics)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    failure = "mindserve_request_failure_total"
    # (the client's deadline: the server answers it "deadline" at that moment, or finds the call "cancelled" when
    # the client's own timer wins the race by the loopback's latency)
    assert (
        delta(failure, **model_labels("held", "ms", reason="cancelled"))
        + delta(failure, **model_labels("held", "ms", reason="deadline"))
        == 1
    )
    assert delta(failure, **model_labels("held", "ms", reason="queue_full")) == 1
    assert delta("mindserve_request_success_total", **model_labels("held", "ms")) == 3
    assert value(after, "mindserve_pending_requests", servable="meter", version="1") == 0


def test_a_killed_worker_counts_as_a_restart_and_its_request_as_worker_lost(meter):
    before = scrape(meter.metrics)
    meter.hold.write_text("")
    started = f"{meter.hold}.started"
    try:
        call = Client(meter.address, "meter", "held").infer_async({"x": ONES})
        _wait_for_file(started, "the held request to run")
        (pid,) = worker_pids(meter, "meter")
        os.kill(pid, signal.SIGKILL)
        assert "was not completed" in call.result()["error"]
    finally:
        os.unlink(meter.hold)
        os.unlink(started)
    wait_until(
        lambda: value(scrape(meter.metrics), "mindserve_worker_up", servable="meter", version="1", device="0") == 1,
        "the worker to be restarted",
        60,
    )
    after = scrape(meter.metrics)
    device = dict(servable="meter", version="1", device="0")
    assert (
        value(after, "mindserve_worker_restarts_total", **device)
        - value(before, "mindserve_worker_restarts_total", **device)
        == 1
    )
    labels = model_labels("held", "ms", reason="worker_lost")
    assert (
        value(after, "mindserve_request_failure_total", **labels)
        - value(before, "mindserve_request_failure_total", **labels)
        == 1
    )
    # what the dead worker had reported stays counted: counters never go back
    for key, old in before.items():
        if key[0] in ("mindserve_inference_count_total", "mindserve_execution_count_total"):
            assert after[key] >= old, key
    assert Client(meter.address, "meter", "add").infer({"x1": ONES, "x2": ONES})[0]["y"].tolist() == [2.0, 2.0]


def test_the_metrics_server_answers_only_get_metrics(meter):
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://{meter.metrics}/metric", timeout=10)
    assert missing.value.code == 404
    assert missing.value.read().decode() == "No endpoint GET /metric; the metrics server serves GET /metrics\n"
    reply = urllib.request.urlopen(f"http://{meter.metrics}/metrics", timeout=10)
    assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    with pytest.raises(urllib.error.HTTPError) as posted:
        urllib.request.urlopen(urllib.request.Request(f"http://{meter.metrics}/metrics", data=b"x"), timeout=10)
    assert posted.value.code == 405


def test_metrics_over_a_unix_socket_guarded_by_access(tmp_path):
    socket_file = tmp_path / "metrics.sock"
    grpc_address = f"127.0.0.1:{free_port()}"
    process = start_server(
        tmp_path,
        f"""
        access = server.AccessConfig(restricted={{"metrics": ("metrics-key", "m")}})
        server.start_grpc_server({grpc_address!r})
        handle = server.start_metrics_server("unix:{socket_file}", access=access)
        assert (handle.address, handle.port) == ("unix:{socket_file}", None)
    """,
        grpc_address,
    )
    try:
        assert unix_request(str(socket_file), "GET", "/metrics").status == 403
        connection = UnixConnection(str(socket_file))
        connection.request("GET", "/metrics", headers={"metrics-key": "m"})
        answer = connection.getresponse()
        assert answer.status == 200
        assert 'mindserve_build_info{version="0.1.0"} 1.0' in answer.read().decode()
    finally:
        process.stop()
    assert not socket_file.exists()


def test_tritonclient_reads_statistics_over_grpc_and_rest(meter):
    import tritonclient.http as triton_http

    client = Client(meter.address, "meter", "add")
    before = triton_grpc.InferenceServerClient(meter.address).get_inference_statistics("meter.add", as_json=True)
    for count in (1, 3, 3):
        client.infer([{"x1": ONES, "x2": ONES}] * count)
    grpc_stats = triton_grpc.InferenceServerClient(meter.address).get_inference_statistics("meter.add", as_json=True)
    http_client = triton_http.InferenceServerClient(meter.rest)
    rest_stats = http_client.get_inference_statistics("meter.add", "1")
    (old,), (new,), (rest,) = before["model_stats"], grpc_stats["model_stats"], rest_stats["model_stats"]
    assert (new["name"], new["version"], rest["name"], rest["version"]) == ("meter.add", "1", "meter.add", "1")

    def grew(stats, key, field="count"):  # protobuf's JSON writes 64-bit integers as strings
        return int(stats["inference_stats"][key].get(field, 0)) - int(old["inference_stats"][key].get(field, 0))

    assert grew(new, "success") == 3 and grew(new, "fail") == 0 and grew(new, "queue") == 3
    assert int(new["inference_count"]) - int(old.get("inference_count", 0)) == 7
    assert int(new["execution_count"]) - int(old.get("execution_count", 0)) == 3
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert grew(new, key, "ns") > 0, key
    # REST answers the same counts as plain JSON numbers, read a moment later
    assert rest["inference_stats"]["success"]["count"] == int(new["inference_stats"]["success"]["count"])
    assert rest["execution_count"] == int(new["execution_count"])
    assert rest["last_inference"] >= int(new["last_inference"]) > 0
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in rest["batch_stats"]}
    assert (
        sizes[3]
        - {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in old.get("batch_stats", [])}.get(3, 0)
        == 2
    )
    every = http_client.get_inference_statistics()["model_stats"]
    assert {(m["name"], m["version"]) for m in every} == {
        (f"meter.{m}", "1") for m in ("add", "pipeline", "broken", "checked", "held")
    }


def test_statistics_of_a_model_or_version_not_served_are_not_found(meter):
    with pytest.raises(Exception, match="Model 'nosuch' is not found"):
        triton_grpc.InferenceServerClient(meter.address).get_inference_statistics("nosuch")
    reply = request(meter.rest, "GET", "/v2/models/meter.add/versions/9/stats")
    assert (reply.status, reply.json()) == (
        404,
        {"error": "Model 'meter.add' version 9 is not found, running versions: 1"},
    )


def test_metrics_over_tls(tmp_path):
    import ssl

    from support.tls import make_tls_files

    files = make_tls_files(tmp_path)
    grpc_address, metrics = free_addresses(2)
    process = start_server(
        tmp_path,
        f"""
        server.start_grpc_server({grpc_address!r})
        tls = server.SSLConfig(certificate={files["server.pem"]!r}, private_key={files["server.key"]!r})
        server.start_metrics_server({metrics!r}, ssl_config=tls)
    """,
        grpc_address,
    )
    try:
        context = ssl.create_default_context(cafile=files["ca.pem"])
        port = metrics.rpartition(":")[2]
        with urllib.request.urlopen(f"https://localhost:{port}/metrics", context=context, timeout=10) as reply:
            assert b'mindserve_build_info{version="0.1.0"} 1.0' in reply.read()
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP is not answered
            urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10)
    finally:
        process.stop()
