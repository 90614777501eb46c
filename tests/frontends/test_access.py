"""Access control on every door (server.AccessConfig): Triton-style restricted keys, JWT bearer tokens (PyJWT),
client certificates over mutual TLS, consumers' tokens; with tritonclient (gRPC and HTTP), the MindSpore Client
and raw HTTP, against one server that listens with a different configuration on each address."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import grpc
import jwt
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tritonclient.utils import InferenceServerException

from mindserve._access.groups import GRPC_METHODS, rest_group
from mindserve._access.policy import AccessPolicy
from mindserve.client import Client, SSLConfig
from mindserve.server import AccessConfig, JWTConfig
from support.paths import BUNDLED_SERVABLES
from support.processes import free_port, start_server

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

SECRET = "an HMAC secret of more than thirty-two bytes"
KEY_DENIED = "This API is restricted, expecting header 'infer-key'"
TOKEN_DENIED = "a valid bearer token is required (Authorization: Bearer <token>)"
X = np.ones((2, 2), np.float32)


def rsa_key_pair() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


RSA_PRIVATE, RSA_PUBLIC = rsa_key_pair()


def token(scope="inference", secret=SECRET, algorithm="HS256", expires_in=300, **claims) -> str:
    payload = {"sub": "tester", "exp": int(time.time()) + expires_in, **claims}
    if scope is not None:
        payload["scope"] = scope
    return jwt.encode(payload, secret, algorithm=algorithm)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tls_files):
    tmp = tmp_path_factory.mktemp("access")
    ports = {
        name: free_port()
        for name in (
            "keys",
            "keys_rest",
            "jwt",
            "jwt_rest",
            "rsa",
            "mtls",
            "mtls_rest",
            "consumers",
            "consumers_rest",
            "open",
        )
    }
    a = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    f = tls_files
    process = start_server(
        tmp,
        f"""
        keys = server.AccessConfig(restricted={{"inference": ("infer-key", "s3cret"),
                                                "health": ("probe-key", "p")}})
        hs = server.AccessConfig(jwt=server.JWTConfig(secret={SECRET!r}))
        rs = server.AccessConfig(jwt=server.JWTConfig(public_key={RSA_PUBLIC.decode()!r}, algorithms=("RS256",)))
        certs = server.AccessConfig(client_certificates={{"client@mindserve.test": ("inference",)}})
        consumers = server.AccessConfig(consumers={{"app": "app-secret"}}, token_ttl_s=60)
        mutual = server.SSLConfig({f["server.pem"]!r}, {f["server.key"]!r}, custom_ca={f["ca.pem"]!r},
                                  verify_client=True)
        server.start_servables(server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0))
        server.start_grpc_server({a["keys"]!r}, access=keys)
        server.start_restful_server({a["keys_rest"]!r}, access=keys)
        server.start_grpc_server({a["jwt"]!r}, access=hs)
        server.start_restful_server({a["jwt_rest"]!r}, access=hs)
        server.start_grpc_server({a["rsa"]!r}, access=rs)
        server.start_grpc_server({a["mtls"]!r}, ssl_config=mutual, access=certs)
        server.start_restful_server({a["mtls_rest"]!r}, ssl_config=mutual, access=certs)
        server.start_grpc_server({a["consumers"]!r}, access=consumers)
        server.start_restful_server({a["consumers_rest"]!r}, access=consumers)
        server.start_grpc_server({a["open"]!r})
    """,
        a["open"],
    )
    process.addresses = a
    yield process
    process.stop()


def grpc_infer(address: str, headers=None):
    with grpcclient.InferenceServerClient(address) as client:
        inputs = [grpcclient.InferInput(n, [1, 2, 2], "FP32") for n in ("x1", "x2")]
        for i in inputs:
            i.set_data_from_numpy(X[None])
        return client.infer("add.add_common", inputs, headers=headers).as_numpy("y")


def http_infer(address: str, headers=None):
    with httpclient.InferenceServerClient(address) as client:
        inputs = [httpclient.InferInput(n, [1, 2, 2], "FP32") for n in ("x1", "x2")]
        for i in inputs:
            i.set_data_from_numpy(X[None])
        # (a copy: tritonclient.http adds its own entries to the dict it is given)
        return client.infer("add.add_common", inputs, headers=dict(headers or {})).as_numpy("y")


def grpc_denied(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.status(), info.value.message()


def http_get(url: str, headers=None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            return response.status, json.loads(body) if body else {}, dict(response.headers)
    except urllib.error.HTTPError as error:
        body = error.read()
        return error.code, json.loads(body) if body else {}, dict(error.headers)


# ---- restricted keys (Triton's restricted APIs) ------------------------------------------------------------------


def test_a_restricted_group_needs_its_key_over_grpc(server):
    address = server.addresses["keys"]
    assert grpc_denied(lambda: grpc_infer(address)) == ("StatusCode.UNAUTHENTICATED", KEY_DENIED)
    assert grpc_denied(lambda: grpc_infer(address, {"infer-key": "wrong"})) == (
        "StatusCode.UNAUTHENTICATED",
        KEY_DENIED,
    )
    np.testing.assert_array_equal(grpc_infer(address, {"infer-key": "s3cret"}), 2 * X[None])
    # Triton's clients send the key with its protocol prefix
    np.testing.assert_array_equal(grpc_infer(address, {"triton-grpc-protocol-infer-key": "s3cret"}), 2 * X[None])


def test_a_restricted_group_needs_its_key_over_http(server):
    address = server.addresses["keys_rest"]
    with pytest.raises(InferenceServerException) as info:
        http_infer(address)
    assert (info.value.status(), info.value.message()) == ("403", KEY_DENIED)
    np.testing.assert_array_equal(http_infer(address, {"infer-key": "s3cret"}), 2 * X[None])
    status, body, _ = http_get(f"http://{address}/v2/health/ready")
    assert (status, body) == (403, {"error": "This API is restricted, expecting header 'probe-key'"})
    assert http_get(f"http://{address}/v2/health/ready", {"probe-key": "p"})[0] == 200


def test_groups_not_restricted_stay_open(server):
    with grpcclient.InferenceServerClient(server.addresses["keys"]) as client:
        assert client.get_model_metadata("add.add_common").name == "add.add_common"
        assert grpc_denied(client.is_server_live) == (
            "StatusCode.UNAUTHENTICATED",
            "This API is restricted, expecting header 'probe-key'",
        )
        assert client.is_server_live(headers={"probe-key": "p"})


def test_the_mindspore_client_sends_headers(server):
    address = server.addresses["keys"]
    instance = {"x1": X, "x2": X}
    with Client(address, "add", "add_common") as client:
        assert client.infer(instance) == {"error": f"Grpc Error, (16, 'unauthenticated'), {KEY_DENIED}"}
    with Client(address, "add", "add_common", headers={"Infer-Key": "s3cret"}) as client:
        result = client.infer(instance)
        np.testing.assert_array_equal(result[0]["y"], 2 * X)
        np.testing.assert_array_equal(client.infer_async(instance).result()[0]["y"], 2 * X)


def test_the_mindspore_rest_form_is_inference(server):
    url = f"http://{server.addresses['keys_rest']}/model/add:add_common"
    body = json.dumps({"instances": [{"x1": X.tolist(), "x2": X.tolist()}]}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 403 and json.loads(info.value.read()) == {"error_msg": KEY_DENIED}
    request.add_header("infer-key", "s3cret")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read()) == {"instances": [{"y": (2 * X).tolist()}]}


# ---- JWT bearer tokens ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: token(expires_in=-120), id="expired"),
        pytest.param(lambda: token(secret="another HMAC secret of more than thirty-two bytes"), id="wrong secret"),
        # (an unsigned token: no key, on purpose)
        pytest.param(
            lambda: jwt.encode({"scope": "inference", "exp": int(time.time()) + 300}, None, algorithm="none"),  # type: ignore[arg-type]
            id="alg none",
        ),
        pytest.param(lambda: jwt.encode({"scope": "inference"}, SECRET, algorithm="HS256"), id="no exp"),
        pytest.param(lambda: token(secret=SECRET * 2, algorithm="HS512"), id="other algorithm"),
        pytest.param(lambda: "not.a.token", id="malformed"),
        pytest.param(lambda: "x" * 8150, id="long"),
    ],
)
def test_invalid_tokens_are_unauthenticated(server, make):
    headers = {"authorization": f"Bearer {make()}"}
    assert grpc_denied(lambda: grpc_infer(server.addresses["jwt"], headers)) == (
        "StatusCode.UNAUTHENTICATED",
        TOKEN_DENIED,
    )
    status, body, response_headers = http_get(
        f"http://{server.addresses['jwt_rest']}/v2/models/add.add_common", headers
    )
    assert (status, body, response_headers["WWW-Authenticate"]) == (401, {"error": TOKEN_DENIED}, "Bearer")


def test_oversized_credentials_are_refused_unread(server):
    headers = {"authorization": f"Bearer {'x' * 9000}"}
    assert grpc_denied(lambda: grpc_infer(server.addresses["jwt"], headers)) == (
        "StatusCode.UNAUTHENTICATED",
        TOKEN_DENIED,
    )
    # past 16 KiB of metadata gRPC itself refuses the call
    code, message = grpc_denied(lambda: grpc_infer(server.addresses["jwt"], {"authorization": "x" * 20000}))
    assert code == "StatusCode.RESOURCE_EXHAUSTED" and "x" * 20 not in message
    # aiohttp refuses a header line past 8190 bytes before any route sees it
    status, body, _ = http_get(f"http://{server.addresses['jwt_rest']}/v2/models/add.add_common", headers)
    assert status == 400 and "x" * 20 not in json.dumps(body), body


def test_a_valid_token_opens_the_groups_of_its_scope(server):
    headers = {"authorization": f"Bearer {token('inference')}"}
    np.testing.assert_array_equal(grpc_infer(server.addresses["jwt"], headers), 2 * X[None])
    np.testing.assert_array_equal(http_infer(server.addresses["jwt_rest"], headers), 2 * X[None])
    with grpcclient.InferenceServerClient(server.addresses["jwt"]) as client:
        assert grpc_denied(lambda: client.get_model_metadata("add.add_common", headers=headers)) == (
            "StatusCode.PERMISSION_DENIED",
            "the token does not open the group 'metadata'",
        )
        both = {"authorization": f"Bearer {token('inference metadata')}"}
        assert client.get_model_metadata("add.add_common", headers=both).name == "add.add_common"
        assert client.is_server_ready()  # health stays open
    status, body, _ = http_get(f"http://{server.addresses['jwt_rest']}/v2", headers)
    assert (status, body) == (403, {"error": "the token does not open the group 'metadata'"})
    assert grpc_denied(lambda: grpc_infer(server.addresses["jwt"])) == ("StatusCode.UNAUTHENTICATED", TOKEN_DENIED)


def test_public_key_tokens_refuse_an_hmac_token_made_with_the_public_key(server):
    address = server.addresses["rsa"]
    good = token(secret=RSA_PRIVATE, algorithm="RS256")
    np.testing.assert_array_equal(grpc_infer(address, {"authorization": f"Bearer {good}"}), 2 * X[None])
    # the classic confusion: an HS256 token whose secret is the server's public key (made by hand: PyJWT refuses to)
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(
        json.dumps({"scope": "inference", "exp": int(time.time()) + 300}).encode()
    ).rstrip(b"=")
    signature = base64.urlsafe_b64encode(hmac.new(RSA_PUBLIC, header + b"." + payload, hashlib.sha256).digest())
    confused = (header + b"." + payload + b"." + signature.rstrip(b"=")).decode()
    assert grpc_denied(lambda: grpc_infer(address, {"authorization": f"Bearer {confused}"})) == (
        "StatusCode.UNAUTHENTICATED",
        TOKEN_DENIED,
    )


# ---- client certificates --------------------------------------------------------------------------------------


def test_a_client_certificate_opens_the_groups_mapped_to_it(server, tls_files):
    f = tls_files
    ssl = SSLConfig(certificate=f["client.pem"], private_key=f["client.key"], custom_ca=f["ca.pem"])
    with Client(server.addresses["mtls"], "add", "add_common", ssl_config=ssl) as client:
        np.testing.assert_array_equal(client.infer({"x1": X, "x2": X})[0]["y"], 2 * X)
    with grpcclient.InferenceServerClient(
        server.addresses["mtls"],
        ssl=True,
        root_certificates=f["ca.pem"],
        private_key=f["client.key"],
        certificate_chain=f["client.pem"],
    ) as client:
        assert grpc_denied(lambda: client.get_model_metadata("add.add_common")) == (
            "StatusCode.UNAUTHENTICATED",
            "a client certificate that opens the group 'metadata' is required",
        )
    with httpclient.InferenceServerClient(
        server.addresses["mtls_rest"],
        ssl=True,
        ssl_options={"ca_certs": f["ca.pem"], "certfile": f["client.pem"], "keyfile": f["client.key"]},
    ) as client:
        inputs = [httpclient.InferInput(n, [1, 2, 2], "FP32") for n in ("x1", "x2")]
        for i in inputs:
            i.set_data_from_numpy(X[None])
        np.testing.assert_array_equal(client.infer("add.add_common", inputs).as_numpy("y"), 2 * X[None])


# ---- consumers' tokens ----------------------------------------------------------------------------------------


def test_consumers_get_tokens_that_every_door_takes(server):
    rest = server.addresses["consumers_rest"]
    query = urllib.parse.urlencode({"consumer_key": "app", "consumer_secret": "app-secret"})
    status, body, headers = http_get(f"http://{rest}/token?{query}")
    assert status == 200 and body["token_type"] == "bearer" and body["expires_in"] == 60
    assert headers["Cache-Control"] == "no-store"
    issued = body["access_token"]
    np.testing.assert_array_equal(grpc_infer(server.addresses["consumers"], {"oauth_token": issued}), 2 * X[None])
    np.testing.assert_array_equal(http_infer(rest, {"Authorization": f"Bearer {issued}"}), 2 * X[None])
    basic = base64.b64encode(b"app:app-secret").decode()
    request = urllib.request.Request(
        f"http://{rest}/oauth/token",
        data=b"grant_type=client_credentials",
        headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read())["token_type"] == "bearer"


def test_a_wrong_consumer_gets_no_token(server):
    rest = server.addresses["consumers_rest"]
    for key, secret in (("app", "wrong"), ("nobody", "app-secret"), ("", "")):
        query = urllib.parse.urlencode({"consumer_key": key, "consumer_secret": secret})
        status, body, _ = http_get(f"http://{rest}/token?{query}")
        assert (status, body) == (401, {"error": "unknown consumer, or wrong secret"})
    assert grpc_denied(lambda: grpc_infer(server.addresses["consumers"], {"oauth_token": "forged"})) == (
        "StatusCode.UNAUTHENTICATED",
        TOKEN_DENIED,
    )


def test_the_server_keeps_serving_after_refusals(server):
    np.testing.assert_array_equal(grpc_infer(server.addresses["open"]), 2 * X[None])


# ---- the group table and the configuration ---------------------------------------------------------------------


def test_every_grpc_method_and_rest_route_has_a_group():
    from mindserve._dispatch.dispatcher import Dispatcher
    from mindserve._frontends.admission import Admission
    from mindserve._frontends.grpc import health_reflection
    from mindserve._frontends.grpc.media_graph_service import MediaGraphHandler
    from mindserve._frontends.grpc.ms_service import MSServiceHandler
    from mindserve._frontends.grpc.oip_service import OipServiceHandler
    from mindserve._frontends.grpc.seldon_service import SeldonServiceHandler
    from mindserve._frontends.rest.server import make_app

    dispatcher, admission = Dispatcher(), Admission()
    # (no OffLoop: building the handlers' method tables runs nothing off the loop)
    handlers = [
        MSServiceHandler(dispatcher, None, admission).rpc_handlers(),  # type: ignore[arg-type]
        OipServiceHandler(dispatcher, admission).rpc_handlers(),
        SeldonServiceHandler(dispatcher, admission).rpc_handlers(),
        MediaGraphHandler(dispatcher, None, admission).rpc_handlers(),  # type: ignore[arg-type]
    ]
    methods = {m for h in handlers for m in h._method_handlers}  # (grpc's generic handler keeps them there)
    methods |= {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    }
    assert methods == set(GRPC_METHODS)
    assert health_reflection.HEALTH_SERVICE_NAME == "grpc.health.v1.Health"
    app = make_app(dispatcher, 1 << 20, admission)
    routes = []
    for r in app.router.routes():
        assert r.resource is not None  # every route of the app is added on a resource
        routes.append((r.method, r.resource.canonical))
    assert routes and all(rest_group(method, canonical) for method, canonical in routes), routes


@pytest.mark.parametrize(
    "config, message",
    [
        (
            AccessConfig(restricted={"inference,infrence": ("k", "v")}),
            "access: unknown group 'infrence' in restricted['inference,infrence']; the groups are health, metadata, "
            "inference, shared-memory, statistics, metrics",
        ),
        (
            AccessConfig(restricted={"inference,inference": ("k", "v")}),
            "access: group 'inference' is named twice in restricted['inference,inference']",
        ),
        (
            AccessConfig(restricted={"inference": ("k", "v"), "metadata,inference": ("k2", "v2")}),
            "access: group 'inference' is restricted twice",
        ),
        (
            AccessConfig(restricted={"inference": ("k", "")}),
            "access: restricted['inference'] should be a (header, value) pair of non-empty strings",
        ),
        (
            AccessConfig(client_certificates={"client": ("inference", "inference")}),
            "access: group 'inference' is named twice in client_certificates['client']",
        ),
        (
            AccessConfig(jwt=JWTConfig(secret="short")),
            "access: jwt.secret has 5 bytes; an HMAC secret needs at least 32 (e.g. python -c 'import secrets; "
            "print(secrets.token_urlsafe(48))')",
        ),
        (
            AccessConfig(jwt=JWTConfig(secret=SECRET, algorithms=("HS256", "RS256"))),
            "access: jwt.algorithms mixes HMAC (HS256) and public-key algorithms: a public key could then be taken "
            "as an "
            "HMAC secret",
        ),
        (
            AccessConfig(jwt=JWTConfig(secret=SECRET, algorithms=("none",))),
            "access: jwt.algorithms: unknown or unsafe algorithm 'none'; use HS256, HS384, HS512 with a secret or "
            "ES256, "
            "ES256K, ES384, ES512, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512 with a public key",
        ),
        (
            AccessConfig(jwt=JWTConfig(secret=SECRET, public_key=RSA_PUBLIC)),
            "access: jwt needs exactly one of secret (HS algorithms) and public_key",
        ),
        (
            AccessConfig(jwt=JWTConfig(secret=SECRET, algorithms=("RS256",))),
            "access: jwt.algorithms RS256 need a public_key, not a secret",
        ),
        (
            AccessConfig(jwt=JWTConfig(public_key="not a key", algorithms=("RS256",))),
            "access: jwt.public_key is not a public key that RS256 can use (PEM expected)",
        ),
        (
            AccessConfig(jwt=JWTConfig(secret=SECRET, algorithms=())),
            "access: jwt.algorithms must list at least one algorithm, e.g. ('HS256',)",
        ),
        (AccessConfig(consumers={"app": "secret"}, token_ttl_s=0), "access: token_ttl_s must be positive, got 0"),
    ],
)
def test_a_bad_configuration_fails_at_start_naming_what_is_wrong(config, message):
    with pytest.raises(RuntimeError) as info:
        AccessPolicy(config)
    assert str(info.value) == message


def test_configurations_never_show_their_secrets():
    config = AccessConfig(
        restricted={"inference": ("infer-key", "s3cret")}, jwt=JWTConfig(secret=SECRET), consumers={"app": "app-secret"}
    )
    text = repr(config)
    assert "s3cret" not in text and SECRET not in text and "app-secret" not in text
    assert "infer-key" in text and "'app'" in text


def test_streaming_rpcs_are_checked_before_their_first_message(server):
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    with grpc.insecure_channel(server.addresses["keys"]) as channel:
        watch = channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            next(watch(health_pb2.HealthCheckRequest(), timeout=30))
        assert (info.value.code(), info.value.details()) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "This API is restricted, expecting header 'probe-key'",
        )
    sent = []

    def requests():
        sent.append(1)
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    with grpc.insecure_channel(server.addresses["jwt"]) as channel:
        reflect = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            next(reflect(requests(), timeout=30))
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, TOKEN_DENIED)
        headers = (("authorization", f"Bearer {token('metadata')}"),)
        reply = next(reflect(requests(), metadata=headers, timeout=30))
        assert "inference.GRPCInferenceService" in [s.name for s in reply.list_services_response.service]
