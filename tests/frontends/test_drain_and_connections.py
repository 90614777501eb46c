"""The drain keeps its promise under load on both transports, and the REST server's connections are bounded:
silent or slow clients are closed after the idle timeout, connections past the cap are refused, and what is not
HTTP gets a JSON answer that echoes nothing."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time

import grpc
import numpy as np
import pytest

from mindserve._proto import ms_service_pb2 as pb
from support.paths import BUNDLED_SERVABLES
from support.processes import free_port, start_server

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

SHUTTING_DOWN = "the server is shutting down: send the request again, to another replica"
PREDICT = "/mindspore.serving.proto.MSService/Predict"
X = np.arange(4, dtype=np.float32).reshape(2, 2)


def _predict_request() -> bytes:
    request = pb.PredictRequest(servable_spec=pb.ServableSpec(name="add", method_name="add_common"))
    tensor = pb.Tensor(shape=pb.TensorShape(dims=[2, 2]), dtype=pb.MS_FLOAT32, data=X.tobytes())
    request.instances.add(items={"x1": tensor, "x2": tensor})
    return request.SerializeToString()


def _start(tmp_path, rest_options: str = ""):
    address, rest = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp_path,
        f"""
        server.start_servables(server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0))
        server.start_grpc_server({address!r})
        server.start_restful_server({rest!r}{rest_options})
    """,
        address,
    )
    server.rest = rest
    return server


def _grpc_loop(address: str, outcomes: list, started: threading.Event) -> None:
    """Predict until the server refuses; each outcome as ("ok" | "refused" | "broken", detail)."""
    with grpc.insecure_channel(address) as channel:
        predict = channel.unary_unary(PREDICT)
        data = _predict_request()
        while True:
            try:
                reply = pb.PredictReply.FromString(predict(data, timeout=30))
            except grpc.RpcError as exc:
                refused = exc.code() == grpc.StatusCode.UNAVAILABLE
                outcomes.append(("refused" if refused else "broken", f"{exc.code()}: {exc.details()}"))
                return
            y = np.frombuffer(reply.instances[0].items["y"].data, np.float32) if reply.instances else None
            ok = not reply.error_msg and y is not None and y.tolist() == (X * 2).ravel().tolist()
            outcomes.append(("ok" if ok else "broken", str(reply)[:200]))
            started.set()


def _http_loop(address: str, outcomes: list, started: threading.Event) -> None:
    """POST /model/add:add_common on one keep-alive connection until the server refuses."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps({"instances": [{"x1": X.tolist(), "x2": X.tolist()}]})
    while True:
        try:
            conn.request("POST", "/model/add:add_common", body=body)
            response = conn.getresponse()
            status, document = response.status, json.loads(response.read())
        except ConnectionRefusedError as exc:  # the listener is closed: a new connection is refused, not cut
            outcomes.append(("refused", repr(exc)))
            return
        except (OSError, http.client.HTTPException) as exc:
            outcomes.append(("broken", repr(exc)))
            return
        if status == 503 and document == {"error_msg": SHUTTING_DOWN}:
            outcomes.append(("refused", "503"))
            return
        ok = status == 200 and document == {"instances": [{"y": (X * 2).tolist()}]}
        outcomes.append(("ok" if ok else "broken", f"{status} {document}"))
        started.set()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_under_load_answers_every_accepted_request_and_refuses_the_rest(tmp_path, sig):
    server = _start(tmp_path)
    outcomes: list = []
    started = [threading.Event() for _ in range(4)]
    threads = [threading.Thread(target=_grpc_loop, args=(server.address, outcomes, started[k])) for k in (0, 1)]
    threads += [threading.Thread(target=_http_loop, args=(server.rest, outcomes, started[k])) for k in (2, 3)]
    try:
        for thread in threads:
            thread.start()
        for event in started:
            assert event.wait(30), "a client loop got no answer"
        time.sleep(0.3)
        code = server.stop(sig)
        for thread in threads:
            thread.join(30)
    finally:
        server.stop(signal.SIGKILL)
    assert code == 0, server.output
    broken = [o for o in outcomes if o[0] == "broken"]
    assert broken == [], broken
    assert sum(o[0] == "refused" for o in outcomes) == 4  # each loop ends at its first refusal
    assert sum(o[0] == "ok" for o in outcomes) >= 4


def _silent_connections(address: str, count: int, partial: bytes) -> list[socket.socket]:
    host, port = address.rsplit(":", 1)
    socks = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=10)
        if partial:
            sock.sendall(partial)
        socks.append(sock)
    return socks


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends on ``sock`` until it closes the connection."""
    sock.settimeout(10)
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    return answer


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (socket.timeout, ConnectionResetError):
        return False


def test_silent_and_slow_clients_are_closed_after_the_idle_timeout(tmp_path):
    server = _start(tmp_path, ", idle_timeout=1.0")
    try:
        silent = _silent_connections(server.rest, 10, b"")
        slow = _silent_connections(server.rest, 10, b"POST /v2/models/add.add_common/infer HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        for sock in silent + slow:
            assert _closed_by_server(sock, 10), "a connection stayed open past the idle timeout"
            sock.close()
        assert time.monotonic() - start < 10
        # an idle keep-alive connection is closed the same way after its response
        host, port = server.rest.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/v2/health/live")
        assert conn.getresponse().read() == b""
        assert _closed_by_server(conn.sock, 10)
        conn.close()
        # the server goes on serving
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/v2/health/ready")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        server.stop()


def test_connections_past_the_cap_are_refused_with_503(tmp_path):
    server = _start(tmp_path, ", max_connections=5")
    try:
        held = _silent_connections(server.rest, 5, b"")
        time.sleep(0.2)
        (extra,) = _silent_connections(server.rest, 1, b"")
        head, _, body = _answer(extra).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"Connection: close" in head
        assert json.loads(body) == {"error": "The server has 5 connections open, its limit: retry later"}
        for sock in held:
            sock.close()
        time.sleep(0.2)
        host, port = server.rest.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/v2/health/live")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        server.stop()


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00secret-bytes\r\n\r\n",  # TLS to a plain port
        b"GET /v2 HTTP/1.1\r\nHost: x\r\nBad Header secret-bytes\r\n\r\n",  # a malformed header
        b"POST /v2/models/add.add_common/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz secret-bytes\r\n",  # a malformed chunk
    ],
)
def test_what_is_not_http_gets_a_json_400_that_echoes_nothing(tmp_path, data):
    server = _start(tmp_path)
    try:
        (sock,) = _silent_connections(server.rest, 1, data)
        answer = _answer(sock)
        head, _, body = answer.partition(b"\r\n\r\n")
        # (HTTP/1.0 in the status line where the request line itself could not be read)
        assert head.startswith((b"HTTP/1.1 400 Bad Request\r\n", b"HTTP/1.0 400 Bad Request\r\n")), answer
        assert b"application/json" in head and b"Server: mindserve" in head and b"secret" not in answer
        assert json.loads(body) == {
            "error": "The request is not valid HTTP/1.1: a malformed request line, header or chunk"
        }
    finally:
        server.stop()
