"""The access holes a hostile client found (issue 22), each as its repro, against one server that listens with a
different access configuration on each address:

- gRPC calls without credentials are refused before their message is read, unary ones too (4 x 90 MB ModelInfer,
  Predict and ModelStreamInfer calls grow the master by far less than they send), also when a client certificate
  is checked (the check runs before the message is read);
- a client certificate's names are matched by type: an email or URI SAN spelled as a configured DNS name opens
  nothing, nor a DNS SAN spelled as a configured IP address;
- a signed JWT whose exp/nbf/iat is no number in range (10**400, a numeric string, true, 1e300, -5) is 401 /
  UNAUTHENTICATED, never a 500;
- a credential header given twice is refused alike on both transports;
- the token endpoints back off a client address whose secret checks keep failing.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
import time
import urllib.parse
from typing import Any

import grpc
import jwt
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from mindserve._access.backoff import FailureBackoff
from mindserve._access.policy import AccessPolicy
from mindserve._proto import ms_service_pb2 as pb
from mindserve.server import AccessConfig
from support.certs import CertificateAuthority, San
from support.memory import reset_peak, status_bytes
from support.messages import grpc_inference as oip
from support.paths import BUNDLED_SERVABLES
from support.processes import free_addresses, start_server, wait_until
from support.rest import request as http_request

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

SECRET = "an HMAC secret of more than thirty-two bytes"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_METADATA = "/inference.GRPCInferenceService/ModelMetadata"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
PREDICT = "/mindspore.serving.proto.MSService/Predict"
WATCH = "/grpc.health.v1.Health/Watch"
KEY_DENIED = "This API is restricted, expecting header 'infer-key'"
TOKEN_DENIED = "a valid bearer token is required (Authorization: Bearer <token>)"
BAD_CONSUMER = "unknown consumer, or wrong secret"
X = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
BIG = 90 << 20  # bytes of one hostile message (the server takes up to 100 MB)
CALLS = 4  # at once
GROWTH_LIMIT = 100 << 20  # what the master may grow by while refusing CALLS x BIG bytes (it grew by all before)

# the client certificates' names, and what each opens (see the server's client_certificates)
CERTS: dict[str, dict[str, Any]] = {
    "dns": dict(sans=[San("DNS", "DNS.Example.com")]),
    "spelled_as_dns": dict(
        sans=[San("email", "dns.example.com"), San("URI", "dns.example.com")], common_name="nobody.example"
    ),
    "ip": dict(sans=[San("IP", "10.1.2.3")]),
    "spelled_as_ip": dict(sans=[San("DNS", "10.1.2.3"), San("email", "10.1.2.3"), San("URI", "10.1.2.3")]),
    "email": dict(sans=[San("email", "mail@Example.COM")]),
    "spelled_as_email": dict(sans=[San("DNS", "mail@example.com"), San("URI", "mail@example.com")]),
    "uri": dict(sans=[San("URI", "spiffe://example.com/app")]),
    "spelled_as_uri": dict(sans=[San("DNS", "spiffe://example.com/app"), San("email", "spiffe://example.com/app")]),
    "common_name": dict(common_name="cn-only.example"),
}
CERTIFICATE_GROUPS = {
    "dns.example.com": ("inference", "health"),
    "10.1.2.3": ("metadata",),
    "mail@example.com": ("inference",),
    "spiffe://example.com/app": ("inference",),
    "cn-only.example": ("inference",),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("access_holes")
    ca = CertificateAuthority()
    ca_file = ca.write(tmp / "ca.pem")
    server_files = ca.issue(tmp, "server", [San("IP", "127.0.0.1"), San("DNS", "localhost")])
    names = ("keys", "keys_rest", "jwt", "jwt_rest", "mtls", "mtls_rest", "consumers_rest")
    a = dict(zip(names, free_addresses(len(names))))
    process = start_server(
        tmp,
        f"""
        keys = server.AccessConfig(restricted={{"inference": ("infer-key", "s3cret")}})
        hs = server.AccessConfig(jwt=server.JWTConfig(secret={SECRET!r}))
        certs = server.AccessConfig(restricted={{"health": ("probe-key", "p")}},
                                    client_certificates={CERTIFICATE_GROUPS!r})
        consumers = server.AccessConfig(consumers={{"app": "app-secret"}})
        mutual = server.SSLConfig({server_files.certificate!r}, {server_files.private_key!r}, custom_ca={ca_file!r},
                                  verify_client=True)
        server.start_servables(server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0))
        server.start_grpc_server({a["keys"]!r}, access=keys)
        server.start_restful_server({a["keys_rest"]!r}, access=keys)
        server.start_grpc_server({a["jwt"]!r}, access=hs)
        server.start_restful_server({a["jwt_rest"]!r}, access=hs)
        server.start_grpc_server({a["mtls"]!r}, ssl_config=mutual, access=certs)
        server.start_restful_server({a["mtls_rest"]!r}, ssl_config=mutual, access=certs)
        server.start_restful_server({a["consumers_rest"]!r}, access=consumers)
    """,
        a["keys"],
    )
    process.addresses = a
    process.ca = ca_file
    process.certs = {name: ca.issue(tmp, name, **spec) for name, spec in CERTS.items()}
    yield process
    process.stop()


# ---- clients ----------------------------------------------------------------------------------------------------


def channel(server, name: str, cert: str = "") -> grpc.Channel:
    """A channel to the server's address ``name``; with ``cert``, mutual TLS with that client certificate."""
    options = [("grpc.max_send_message_length", 512 << 20), ("grpc.max_receive_message_length", 512 << 20)]
    if not cert:
        return grpc.insecure_channel(server.addresses[name], options=options)
    files = server.certs[cert]
    with open(server.ca, "rb") as ca, open(files.private_key, "rb") as key, open(files.certificate, "rb") as chain:
        credentials = grpc.ssl_channel_credentials(ca.read(), key.read(), chain.read())
    return grpc.secure_channel(server.addresses[name], credentials, options=options)


def tls_context(server, cert: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=server.ca)
    files = server.certs[cert]
    context.load_cert_chain(files.certificate, files.private_key)
    return context


def infer_request(x: np.ndarray = X) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="add.add_common")
    for name in ("x1", "x2"):
        tensor = request.inputs.add(name=name, datatype="FP32")
        tensor.shape.extend(x.shape)
        request.raw_input_contents.append(x.tobytes())
    return request


def grpc_infer(ch: grpc.Channel, metadata=()) -> np.ndarray:
    reply = oip.ModelInferResponse.FromString(
        ch.unary_unary(MODEL_INFER)(infer_request().SerializeToString(), metadata=metadata, timeout=60)
    )
    return np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(X.shape)


def grpc_refusal(call) -> tuple:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def rest_infer(server, name: str, headers=None, context=None):
    body = {
        "inputs": [
            {"name": n, "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()} for n in ("x1", "x2")
        ]
    }
    return http_request(
        server.addresses[name], "POST", "/v2/models/add.add_common/infer", body, headers=headers, context=context
    )


def rest_with_headers(
    server, name: str, method: str, path: str, headers: list, body: bytes = b""
) -> tuple[int, dict, dict]:
    """A request whose headers (a list of pairs) may name one header twice, which a dict cannot."""
    host, port = server.addresses[name].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.putrequest(method, path)
        for key, value in headers + [("Content-Length", str(len(body)))]:
            conn.putheader(key, value)
        conn.endheaders(body)
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}, dict(response.getheaders())
    finally:
        conn.close()


# ---- unauthenticated messages are refused unread --------------------------------------------------------------


@pytest.fixture(scope="module")
def big_messages() -> dict:
    """One hostile message of each kind, about BIG bytes (made once: sent by every call of the tests)."""
    half = np.zeros(BIG // 8, np.float32)
    infer = infer_request(half[None]).SerializeToString()
    predict = pb.PredictRequest()
    predict.servable_spec.name, predict.servable_spec.method_name = "add", "add_common"
    instance = predict.instances.add()
    for name in ("x1", "x2"):
        tensor = instance.items[name]
        tensor.dtype = pb.MS_FLOAT32
        tensor.shape.dims.extend([BIG // 8])
        tensor.data = bytes(BIG // 2)
    return {"infer": infer, "predict": predict.SerializeToString()}


def refused_at_once(server, calls: list) -> tuple[list, int]:
    """Run ``calls`` (each takes nothing and returns (code, details)) at once, each on its own connection; their
    outcomes, and how far the master's peak RSS rose above its RSS before them."""
    pid = server.proc.pid
    reset_peak(pid)
    baseline = status_bytes(pid, "VmRSS")
    outcomes: list = [None] * len(calls)

    def run(i: int) -> None:
        outcomes[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a refused call did not end"
    return outcomes, status_bytes(pid, "VmHWM") - baseline


def unary_call(server, name: str, method: str, data: bytes, cert: str = ""):
    def call() -> tuple:
        with channel(server, name, cert) as ch:
            return grpc_refusal(lambda: ch.unary_unary(method)(data, timeout=60))

    return call


@pytest.mark.parametrize("method, kind", [(MODEL_INFER, "infer"), (PREDICT, "predict")])
def test_unauthenticated_unary_calls_are_refused_before_their_message_is_read(server, big_messages, method, kind):
    data = big_messages[kind]
    assert len(data) >= BIG
    outcomes, grown = refused_at_once(server, [unary_call(server, "keys", method, data)] * CALLS)
    assert outcomes == [(grpc.StatusCode.UNAUTHENTICATED, KEY_DENIED)] * CALLS
    assert grown < GROWTH_LIMIT, f"the master grew by {grown >> 20} MB refusing {CALLS * len(data) >> 20} MB"
    with channel(server, "keys") as ch:
        for _ in range(3):  # refused one after another on one connection: its flow control is not used up
            assert grpc_refusal(lambda: ch.unary_unary(method)(data, timeout=60)) == (
                grpc.StatusCode.UNAUTHENTICATED,
                KEY_DENIED,
            )
        np.testing.assert_array_equal(grpc_infer(ch, (("infer-key", "s3cret"),)), 2 * X)  # served as before


def test_unauthenticated_streams_are_refused_before_their_first_message_is_read(server, big_messages):
    data = big_messages["infer"]
    sent = []

    def stream() -> tuple:
        def requests():
            for _ in range(3):
                sent.append(len(data))
                yield data

        with channel(server, "keys") as ch:
            return grpc_refusal(lambda: next(ch.stream_stream(STREAM_INFER)(requests(), timeout=60)))

    outcomes, grown = refused_at_once(server, [stream] * CALLS)
    assert outcomes == [(grpc.StatusCode.UNAUTHENTICATED, KEY_DENIED)] * CALLS
    assert grown < GROWTH_LIMIT, f"the master grew by {grown >> 20} MB refusing streams of {sum(sent) >> 20} MB"
    with channel(server, "keys") as ch:
        replies = ch.stream_stream(STREAM_INFER)(
            iter([infer_request().SerializeToString()]), metadata=(("infer-key", "s3cret"),), timeout=60
        )
        reply = oip.ModelStreamInferResponse.FromString(next(replies))
        assert reply.error_message == ""
        np.testing.assert_array_equal(
            np.frombuffer(reply.infer_response.raw_output_contents[0], np.float32), 2 * X.ravel()
        )


def test_a_certificate_is_checked_before_the_message_is_read(server, big_messages):
    data = big_messages["infer"]
    # the "ip" certificate opens metadata, not inference: the check needs the TLS identity, inside the handler
    outcomes, grown = refused_at_once(server, [unary_call(server, "mtls", MODEL_INFER, data, "ip")] * CALLS)
    assert (
        outcomes
        == [(grpc.StatusCode.UNAUTHENTICATED, "a client certificate that opens the group 'inference' is required")]
        * CALLS
    )
    assert grown < GROWTH_LIMIT, f"the master grew by {grown >> 20} MB refusing {CALLS * len(data) >> 20} MB"
    with channel(server, "mtls", "dns") as ch:  # a certificate that opens inference: its message read, served
        np.testing.assert_array_equal(grpc_infer(ch), 2 * X)


def test_a_certificate_admits_calls_of_every_kind(server):
    """Admitted by its certificate, a call of each kind gets its one message (unary) or its stream as before."""
    with channel(server, "mtls", "dns") as ch:
        np.testing.assert_array_equal(grpc_infer(ch), 2 * X)  # unary-unary
        watch = ch.unary_stream(
            WATCH,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        replies = watch(health_pb2.HealthCheckRequest(), timeout=30)  # unary-stream (health: opened by "dns")
        assert next(replies).status == health_pb2.HealthCheckResponse.SERVING
        replies.cancel()
        stream = ch.stream_stream(STREAM_INFER)(iter([infer_request().SerializeToString()] * 2), timeout=60)
        replies = [oip.ModelStreamInferResponse.FromString(r) for r in stream]  # stream-stream
        assert [r.error_message for r in replies] == ["", ""]
        # a unary method takes its first message, as grpc does; none at all is an error, not a wait
        as_stream = ch.stream_unary(MODEL_INFER)
        reply = oip.ModelInferResponse.FromString(
            as_stream(iter([infer_request().SerializeToString(), b"never read"]), timeout=60)
        )
        assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == (2 * X).ravel().tolist()
        assert grpc_refusal(lambda: as_stream(iter([]), timeout=60)) == (
            grpc.StatusCode.INTERNAL,
            "the call ended before its request message",
        )
    with channel(server, "mtls", "ip") as ch:
        reply = oip.ModelMetadataResponse.FromString(
            ch.unary_unary(MODEL_METADATA)(
                oip.ModelMetadataRequest(name="add.add_common").SerializeToString(), timeout=30
            )
        )
        assert reply.name == "add.add_common"
        watch = ch.unary_stream(WATCH, request_serializer=health_pb2.HealthCheckRequest.SerializeToString)
        assert grpc_refusal(lambda: next(watch(health_pb2.HealthCheckRequest(), timeout=30))) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "This API is restricted, expecting header 'probe-key'",
        )


# ---- certificate identities by SAN type -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cert, opens",
    [
        ("dns", "inference"),
        ("spelled_as_dns", None),
        ("ip", "metadata"),
        ("spelled_as_ip", None),
        ("email", "inference"),
        ("spelled_as_email", None),
        ("uri", "inference"),
        ("spelled_as_uri", None),
        ("common_name", "inference"),
    ],
)
def test_certificate_names_are_matched_by_their_type(server, cert, opens):
    infer_text = "a client certificate that opens the group 'inference' is required"
    metadata_text = "a client certificate that opens the group 'metadata' is required"
    with channel(server, "mtls", cert) as ch:
        if opens == "inference":
            np.testing.assert_array_equal(grpc_infer(ch), 2 * X)
        else:
            assert grpc_refusal(lambda: grpc_infer(ch)) == (grpc.StatusCode.UNAUTHENTICATED, infer_text)
        metadata = ch.unary_unary(MODEL_METADATA)
        request = oip.ModelMetadataRequest(name="add.add_common").SerializeToString()
        if opens == "metadata":
            assert oip.ModelMetadataResponse.FromString(metadata(request, timeout=30)).name == "add.add_common"
        else:
            assert grpc_refusal(lambda: metadata(request, timeout=30)) == (
                grpc.StatusCode.UNAUTHENTICATED,
                metadata_text,
            )
    context = tls_context(server, cert)
    reply = rest_infer(server, "mtls_rest", context=context)
    if opens == "inference":
        assert reply.status == 200 and reply.json()["outputs"][0]["data"] == (2 * X).ravel().tolist()
    else:
        assert (reply.status, reply.json()) == (401, {"error": infer_text})
    reply = http_request(server.addresses["mtls_rest"], "GET", "/v2/models/add.add_common", context=context)
    if opens == "metadata":
        assert reply.status == 200 and reply.json()["name"] == "add.add_common"
    else:
        assert (reply.status, reply.json()) == (401, {"error": metadata_text})


def test_configured_names_are_typed_by_their_form():
    policy = AccessPolicy(
        AccessConfig(
            client_certificates={
                "Host.Example.com": ("inference",),
                "::1": ("metadata",),
                "a@Example.com": ("statistics",),
                "urn:example:app": ("shared-memory",),
            }
        )
    )
    assert policy.admits_identities("inference", [("DNS", "host.example.COM")])
    assert policy.admits_identities("inference", [("CN", "Host.Example.com")])
    assert not policy.admits_identities("inference", [("CN", "host.example.com")])  # a common name exactly
    assert not policy.admits_identities("inference", [("email", "Host.Example.com"), ("URI", "Host.Example.com")])
    assert policy.admits_identities("metadata", [("IP", "0:0::1")])
    assert not policy.admits_identities("metadata", [("DNS", "::1"), ("IP", "127.0.0.1"), ("IP", "not an ip")])
    assert policy.admits_identities("statistics", [("email", "a@example.COM")])
    assert not policy.admits_identities("statistics", [("email", "A@example.com"), ("DNS", "a@Example.com")])
    assert policy.admits_identities("shared-memory", [("URI", "urn:example:app")])
    assert not policy.admits_identities("shared-memory", [("URI", "URN:example:app"), ("DNS", "urn:example:app")])
    with pytest.raises(RuntimeError) as info:
        AccessPolicy(AccessConfig(client_certificates={"": ("inference",)}))
    assert str(info.value) == (
        "access: client_certificates maps names (a DNS name, an IP address, an email "
        "address, a URI or a common name) to groups, not ''"
    )


# ---- JWT time claims --------------------------------------------------------------------------------------------


def signed(**claims) -> str:
    return jwt.encode({"sub": "tester", "scope": "inference metadata", **claims}, SECRET, algorithm="HS256")


def claim_text(name: str) -> str:
    return f"{TOKEN_DENIED}: its claim '{name}' must be a number of seconds since 1970, from 0 to 2**53"


def _soon() -> int:
    return int(time.time()) + 300


@pytest.mark.parametrize(
    "claims, bad",
    [
        pytest.param(lambda: {"exp": 10**400}, "exp", id="exp 10**400"),
        pytest.param(lambda: {"exp": str(_soon())}, "exp", id="exp a numeric string"),
        pytest.param(lambda: {"exp": True}, "exp", id="exp true"),
        pytest.param(lambda: {"exp": 1e300}, "exp", id="exp 1e300"),
        pytest.param(lambda: {"exp": 2**53 + 1}, "exp", id="exp past 2**53"),
        pytest.param(lambda: {"exp": [_soon()]}, "exp", id="exp a list"),
        pytest.param(lambda: {"exp": _soon(), "nbf": "0"}, "nbf", id="nbf a string"),
        pytest.param(lambda: {"exp": _soon(), "nbf": -5}, "nbf", id="nbf negative"),
        pytest.param(lambda: {"exp": _soon(), "iat": 10**400}, "iat", id="iat 10**400"),
    ],
)
def test_time_claims_must_be_numbers_in_range(server, claims, bad):
    headers = {"authorization": f"Bearer {signed(**claims())}"}
    with channel(server, "jwt") as ch:
        assert grpc_refusal(lambda: grpc_infer(ch, tuple(headers.items()))) == (
            grpc.StatusCode.UNAUTHENTICATED,
            claim_text(bad),
        )
    reply = http_request(server.addresses["jwt_rest"], "GET", "/v2/models/add.add_common", headers=headers)
    assert (reply.status, reply.json(), reply.headers["WWW-Authenticate"]) == (
        401,
        {"error": claim_text(bad)},
        "Bearer",
    )
    reply = rest_infer(server, "jwt_rest", headers)
    assert (reply.status, reply.json()) == (401, {"error": claim_text(bad)})


def test_time_claims_in_range_are_taken_as_before(server):
    now = time.time()
    good = signed(exp=now + 300.5, nbf=0, iat=now - 1.5)  # floats and ints alike
    headers = {"authorization": f"Bearer {good}"}
    with channel(server, "jwt") as ch:
        np.testing.assert_array_equal(grpc_infer(ch, tuple(headers.items())), 2 * X)
        expired = {"authorization": f"Bearer {signed(exp=now - 120)}"}
        not_yet = {"authorization": f"Bearer {signed(exp=now + 600, nbf=now + 300)}"}
        issued_later = {"authorization": f"Bearer {signed(exp=now + 600, iat=now + 300)}"}
        for refused in (expired, not_yet, issued_later):
            assert grpc_refusal(lambda: grpc_infer(ch, tuple(refused.items()))) == (
                grpc.StatusCode.UNAUTHENTICATED,
                TOKEN_DENIED,
            )
            reply = http_request(server.addresses["jwt_rest"], "GET", "/v2/models/add.add_common", headers=refused)
            assert (reply.status, reply.json()) == (401, {"error": TOKEN_DENIED})
    reply = rest_infer(server, "jwt_rest", headers)
    assert reply.status == 200 and reply.json()["outputs"][0]["data"] == (2 * X).ravel().tolist()


# ---- a credential given twice ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, headers, text",
    [
        ("keys", [("infer-key", "s3cret"), ("infer-key", "s3cret")], "the header 'infer-key' is given more than once"),
        ("keys", [("infer-key", "wrong"), ("infer-key", "s3cret")], "the header 'infer-key' is given more than once"),
        (
            "keys",
            [("infer-key", "s3cret"), ("triton-grpc-protocol-infer-key", "s3cret")],
            "the header 'infer-key' is given more than once",
        ),
        (
            "jwt",
            [("authorization", "Bearer forged"), ("authorization", "Bearer {good}")],
            "the header 'authorization' is given more than once",
        ),
        (
            "jwt",
            [("authorization", "Bearer {good}"), ("authorization", "Bearer forged")],
            "the header 'authorization' is given more than once",
        ),
    ],
)
def test_a_credential_given_twice_is_refused_alike_on_both_transports(server, name, headers, text):
    good = signed(exp=_soon())
    headers = [(key, value.format(good=good)) for key, value in headers]
    with channel(server, name) as ch:
        assert grpc_refusal(lambda: grpc_infer(ch, tuple(headers))) == (grpc.StatusCode.UNAUTHENTICATED, text)
    rest_headers = [(key, value) for key, value in headers if not key.startswith("triton-grpc-protocol-")]
    if len(rest_headers) == 2:  # (REST has no Triton-prefixed form)
        body = json.dumps(
            {
                "inputs": [
                    {"name": n, "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}
                    for n in ("x1", "x2")
                ]
            }
        ).encode()
        status, answer, _ = rest_with_headers(
            server,
            f"{name}_rest",
            "POST",
            "/v2/models/add.add_common/infer",
            rest_headers + [("Content-Type", "application/json")],
            body,
        )
        assert (status, answer) == (401, {"error": text})
    # the credential given once is taken as before
    single = ("infer-key", "s3cret") if name == "keys" else ("authorization", f"Bearer {good}")
    with channel(server, name) as ch:
        np.testing.assert_array_equal(grpc_infer(ch, (single,)), 2 * X)
    reply = rest_infer(server, f"{name}_rest", dict([single]))
    assert reply.status == 200 and reply.json()["outputs"][0]["data"] == (2 * X).ravel().tolist()


def test_oauth_token_refuses_two_authorization_headers(server):
    basic = "Basic " + base64.b64encode(b"app:app-secret").decode()
    form = b"grant_type=client_credentials"
    content = ("Content-Type", "application/x-www-form-urlencoded")
    status, body, headers = rest_with_headers(
        server,
        "consumers_rest",
        "POST",
        "/oauth/token",
        [("Authorization", basic), ("Authorization", basic), content],
        form,
    )
    assert (status, body) == (401, {"error": "the header 'authorization' is given more than once"})
    status, body, _ = rest_with_headers(
        server, "consumers_rest", "POST", "/oauth/token", [("Authorization", basic), content], form
    )
    assert status == 200 and body["token_type"] == "bearer"


# ---- the token endpoints' back-off -----------------------------------------------------------------------------


def token_status(server, secret: str, source: str = "127.0.0.1") -> tuple[int, dict, dict]:
    """GET /token from the address ``source`` (any 127.x address reaches the server's 127.0.0.1)."""
    host, port = server.addresses["consumers_rest"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    try:
        query = urllib.parse.urlencode({"consumer_key": "app", "consumer_secret": secret})
        conn.request("GET", f"/token?{query}")
        response = conn.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        conn.close()


def test_failed_secrets_back_a_client_off(server):
    backed_off = "too many failed attempts from this address; retry after {} s"
    for _ in range(5):  # FAILURES_ALLOWED
        assert token_status(server, "wrong")[:2] == (401, {"error": BAD_CONSUMER})
    status, body, headers = token_status(server, "app-secret")  # the right secret too: not checked now
    assert (status, body, headers["Retry-After"]) == (429, {"error": backed_off.format(1)}, "1")
    status, body, _ = rest_with_headers(
        server,
        "consumers_rest",
        "POST",
        "/oauth/token",
        [
            ("Authorization", "Basic " + base64.b64encode(b"app:app-secret").decode()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b"grant_type=client_credentials",
    )
    assert (status, body) == (429, {"error": backed_off.format(1)})
    # another client is not backed off
    assert token_status(server, "app-secret", "127.0.0.2")[0] == 200
    # once the back-off is over one more check is made; failing, it doubles the back-off
    wait_until(lambda: token_status(server, "wrong")[0] != 429, "the back-off to end", 30)
    status, body, headers = token_status(server, "app-secret")
    assert (status, body, headers["Retry-After"]) == (429, {"error": backed_off.format(2)}, "2")
    # the right secret after the back-off works, and forgets the failures
    wait_until(lambda: token_status(server, "app-secret")[0] == 200, "a token after the back-off", 30)
    assert token_status(server, "wrong")[:2] == (401, {"error": BAD_CONSUMER})
    assert token_status(server, "app-secret")[0] == 200


def test_the_back_off_table_is_bounded_and_forgets():
    now = [0.0]
    backoff = FailureBackoff(
        allowed=2, window_s=10, first_backoff_s=1, max_backoff_s=4, capacity=3, clock=lambda: now[0]
    )
    for client in ("a", "a", "b", "c"):
        backoff.failed(client)
    assert backoff.retry_after("a") == 1 and backoff.retry_after("b") == 0
    backoff.failed("d")  # a fourth client: the one that failed least recently ("a") is forgotten
    assert len(backoff) == 3 and backoff.retry_after("a") == 0
    now[0] = 5.0
    for expected in (1, 2, 4, 4):  # begun by the second failure, doubled by each after it, up to the maximum
        backoff.failed("b")
        assert backoff.retry_after("b") == expected
    now[0] = 30.0  # a window without failures, and no back-off running: "c" and "d" are forgotten
    backoff.failed("e")
    assert backoff.retry_after("e") == 0 and len(backoff) == 1
    backoff.failed("e")
    assert backoff.retry_after("e") == 1
    backoff.succeeded("e")
    assert backoff.retry_after("e") == 0 and len(backoff) == 0


def test_an_ipv6_client_is_backed_off_by_its_network():
    from types import SimpleNamespace

    from mindserve._frontends.rest.access import _client

    # (stand-ins for web.Request with the one attribute _client reads: hence the ignores)
    first = SimpleNamespace(remote="2001:db8::5")
    second = SimpleNamespace(remote="2001:db8::ffff:1")
    assert _client(first) == _client(second) == "2001:db8::/64"  # type: ignore[arg-type]
    assert _client(SimpleNamespace(remote="::ffff:10.0.0.1")) == "10.0.0.1"  # type: ignore[arg-type]
    assert _client(SimpleNamespace(remote="127.0.0.2")) == "127.0.0.2"  # type: ignore[arg-type]
    assert _client(SimpleNamespace(remote=None)) == ""  # type: ignore[arg-type]
