"""Seldon's Classifier on the gRPC port, called as Seldon's own clients call it: a token from the REST server's
/token endpoint, then io.seldon.api.rpc.Classifier/Predict with it in the metadata `oauth_token`, the data an
IrisPredictRequest (or a Struct) packed in a google.protobuf.Any. The client's messages are compiled here, from
Seldon's published proto, with grpcio-tools."""

from __future__ import annotations

import importlib.resources
import json
import re
import sys
import urllib.parse
import urllib.request

import grpc
import pytest
from google.protobuf import any_pb2, struct_pb2

from support.paths import BUNDLED_SERVABLES
from support.processes import free_port, start_server

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

SELDON_PROTO = """
syntax = "proto3";
import "google/protobuf/any.proto";
package io.seldon.api.rpc;
service Classifier { rpc Predict (ClassificationRequest) returns (ClassificationReply) {} }
message ClassificationRequest { ClassificationRequestMeta meta = 1; google.protobuf.Any data = 2; }
message ClassificationRequestMeta { string puid = 1; }
message ClassificationReply { ClassificationReplyMeta meta = 1; repeated ClassificationResult predictions = 2;
                              google.protobuf.Any custom = 3; }
message ClassificationReplyMeta { string puid = 1; string modelName = 2; string variation = 3; }
message ClassificationResult { double prediction = 1; string predictedClass = 2; double confidence = 3; }
"""
IRIS_PROTO = """
syntax = "proto3";
package io.seldon.microservice.iris;
message IrisPredictRequest { float f1 = 1; float f2 = 2; float f3 = 3; float f4 = 4; }
"""
CLASSES = ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]
PREDICT = "/io.seldon.api.rpc.Classifier/Predict"


@pytest.fixture(scope="module")
def seldon_client(tmp_path_factory):
    """Seldon's client messages (seldon_pb2, iris_pb2), compiled from the proto text above."""
    from grpc_tools import protoc

    tmp = tmp_path_factory.mktemp("seldon_client")
    (tmp / "seldon_client_api.proto").write_text(SELDON_PROTO)
    (tmp / "seldon_client_iris.proto").write_text(IRIS_PROTO)
    include = importlib.resources.files("grpc_tools") / "_proto"
    assert (
        protoc.main(
            [
                "protoc",
                f"-I{tmp}",
                f"-I{include}",
                f"--python_out={tmp}",
                "seldon_client_api.proto",
                "seldon_client_iris.proto",
            ]
        )
        == 0
    )
    sys.path.insert(0, str(tmp))
    try:
        yield importlib.import_module("seldon_client_api_pb2"), importlib.import_module("seldon_client_iris_pb2")
    finally:
        sys.path.remove(str(tmp))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seldon")
    grpc_address, rest_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    open_address = f"127.0.0.1:{free_port()}"
    process = start_server(
        tmp,
        f"""
        access = server.AccessConfig(consumers={{"oauthkey": "oauthsecret"}})
        server.start_servables(server.ServableStartConfig({BUNDLED_SERVABLES!r}, "iris", device_ids=0))
        server.start_grpc_server({grpc_address!r}, access=access)
        server.start_restful_server({rest_address!r}, access=access)
        server.start_grpc_server({open_address!r})
    """,
        grpc_address,
    )
    process.rest, process.open_address = rest_address, open_address
    yield process
    process.stop()


def get_token(rest: str) -> str:
    query = urllib.parse.urlencode({"consumer_key": "oauthkey", "consumer_secret": "oauthsecret"})
    with urllib.request.urlopen(f"http://{rest}/token?{query}", timeout=30) as response:
        return json.loads(response.read())["access_token"]


def predict(address: str, request, reply_class, metadata=()):
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            PREDICT, request_serializer=type(request).SerializeToString, response_deserializer=reply_class.FromString
        )
        return call(request, metadata=metadata, timeout=30)


def iris_request(api, iris, puid="12345", **features):
    data = any_pb2.Any()
    data.Pack(iris.IrisPredictRequest(**(features or {"f1": 5.1, "f2": 3.5, "f3": 1.4, "f4": 0.2})))
    return api.ClassificationRequest(meta=api.ClassificationRequestMeta(puid=puid), data=data)


def assert_setosa(reply) -> None:
    assert [p.predictedClass for p in reply.predictions] == CLASSES
    confidences = [p.confidence for p in reply.predictions]
    assert [p.prediction for p in reply.predictions] == confidences
    assert sum(confidences) == pytest.approx(1.0, abs=1e-6)
    assert max(range(3), key=lambda i: confidences[i]) == 0 and confidences[0] > 0.9


def test_seldons_example_client_with_a_token(server, seldon_client):
    api, iris = seldon_client
    token = get_token(server.rest)
    reply = predict(server.address, iris_request(api, iris), api.ClassificationReply, (("oauth_token", token),))
    assert (reply.meta.puid, reply.meta.modelName, reply.meta.variation) == ("12345", "iris", "default")
    assert_setosa(reply)
    virginica = predict(
        server.address,
        iris_request(api, iris, f1=6.7, f2=3.0, f3=5.2, f4=2.3),
        api.ClassificationReply,
        (("oauth_token", token),),
    )
    confidences = [p.confidence for p in virginica.predictions]
    assert max(range(3), key=lambda i: confidences[i]) == 2


def test_without_a_token_the_call_is_refused(server, seldon_client):
    api, iris = seldon_client
    with pytest.raises(grpc.RpcError) as info:
        predict(server.address, iris_request(api, iris), api.ClassificationReply)
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "a valid bearer token is required (Authorization: Bearer <token>)",
    )


def test_a_struct_without_puid_gets_a_new_puid(server, seldon_client):
    api, _ = seldon_client
    data = any_pb2.Any()
    data.Pack(
        struct_pb2.Struct(
            fields={
                name: struct_pb2.Value(number_value=v)
                for name, v in zip(("f1", "f2", "f3", "f4"), (5.1, 3.5, 1.4, 0.2))
            }
        )
    )
    reply = predict(server.open_address, api.ClassificationRequest(data=data), api.ClassificationReply)
    assert re.fullmatch("[0-9a-f]{40}", reply.meta.puid), reply.meta.puid
    assert_setosa(reply)


@pytest.mark.parametrize(
    "make_data, message",
    [
        (
            lambda api, iris: struct_pb2.Struct(fields={"f1": struct_pb2.Value(number_value=1.0)}),
            "Cannot find input f2 in the request data (google.protobuf.Struct), servable iris, method classify",
        ),
        (
            lambda api, iris: struct_pb2.Struct(
                fields={n: struct_pb2.Value(number_value=1.0) for n in ("f1", "f2", "f3", "f4", "f5")}
            ),
            "Unexpected input f5 in the request data (google.protobuf.Struct), servable iris, method classify takes "
            "f1, "
            "f2, f3, f4",
        ),
        (
            lambda api, iris: api.ClassificationRequestMeta(puid="x"),
            "The request data is a io.seldon.api.rpc.ClassificationRequestMeta; servable iris takes "
            "google.protobuf.Struct, io.seldon.microservice.iris.IrisPredictRequest",
        ),
        (
            lambda api, iris: struct_pb2.Struct(
                fields={n: struct_pb2.Value(string_value="big") for n in ("f1", "f2", "f3", "f4")}
            ),
            None,
        ),
    ],
)
def test_bad_data_is_invalid_argument_naming_what_is_wrong(server, seldon_client, make_data, message):
    api, iris = seldon_client
    data = any_pb2.Any()
    data.Pack(make_data(api, iris))
    with pytest.raises(grpc.RpcError) as info:
        predict(server.open_address, api.ClassificationRequest(data=data), api.ClassificationReply)
    if message is None:  # a stage refuses it as the client's error (register.InputError)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
        assert info.value.details() == (
            "Call Function 'iris.features' Failed, method: 'classify', stage index(begin "
            "with 1): 1, error msg: f1 must be one number (a measurement in cm)"
        )
    else:
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_no_data_is_invalid_argument(server, seldon_client):
    api, _ = seldon_client
    with pytest.raises(grpc.RpcError) as info:
        predict(server.open_address, api.ClassificationRequest(), api.ClassificationReply)
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "The request has no data: send the inputs of servable iris, method "
        "classify (f1, f2, f3, f4) as a google.protobuf.Struct in data",
    )
