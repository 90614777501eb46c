"""The Open Inference Protocol's gRPC messages (``grpc_inference.proto``), built in a descriptor pool of their own.

Standard clients such as tritonclient register the same full names (``inference.ModelInferRequest``, ...) in
protobuf's default pool from their own .proto file, and protobuf refuses a second file that defines a name
already there: whichever of the two was imported second would fail. So the build compiles
grpc_inference.proto to a descriptor set (``grpc_inference.desc``, beside this file, generated like the
``*_pb2.py`` modules and never committed) and the message classes below are made from it in a private pool.
mindserve and tritonclient can then live in one process, and the wire format is the protocol's either way.
"""
from __future__ import annotations

import os

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO_FILE = "mindserve/_proto/grpc_inference.proto"  # the file's name in the pool (protoc ran from the root)
SERVICE_NAME = "inference.GRPCInferenceService"


def _load_pool() -> descriptor_pool.DescriptorPool:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpc_inference.desc")
    try:
        with open(path, "rb") as f:
            files = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    except FileNotFoundError:
        raise ImportError(f"{path} is missing: it is generated at build time (pip install -e . or "
                          f"python setup.py build_protos)") from None
    pool = descriptor_pool.DescriptorPool()
    for file_proto in files.file:
        pool.AddSerializedFile(file_proto.SerializeToString())
    return pool


POOL = _load_pool()
DESCRIPTOR = POOL.FindFileByName(PROTO_FILE)


def _message(name: str) -> type:
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"inference.{name}"))


ServerLiveRequest = _message("ServerLiveRequest")
ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyRequest = _message("ServerReadyRequest")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataRequest = _message("ServerMetadataRequest")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
InferParameter = _message("InferParameter")
InferTensorContents = _message("InferTensorContents")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
