"""What the ``data`` of a Seldon ClassificationRequest (a ``google.protobuf.Any``) becomes: the inputs of the
servable's classifying method.

- ``google.protobuf.Struct``: each field is an input by name, its JSON value typed by MindSpore's REST rules
  (numbers float32 -- a Struct keeps no integers --, booleans, strings, nested lists as tensors).
- a message of a type that the servable's ``request_proto`` declares: each field is an input by name, typed by
  the field (float: float32, double: float64, int32: int32, ..., string: str, bytes: bytes; repeated: a 1-d
  tensor). The .proto file is compiled with protoc when the servable starts, into a descriptor pool of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any, Optional

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from mindserve import _dtypes
from mindserve._errors import InvalidInput, clip
from mindserve._frontends.mindspore import values as ms_values
from mindserve._tensor import RawTensor

STRUCT_TYPE = "google.protobuf.Struct"
_NUMPY_OF_FIELD = {
    FieldDescriptor.TYPE_FLOAT: np.float32,
    FieldDescriptor.TYPE_DOUBLE: np.float64,
    FieldDescriptor.TYPE_INT32: np.int32,
    FieldDescriptor.TYPE_SINT32: np.int32,
    FieldDescriptor.TYPE_SFIXED32: np.int32,
    FieldDescriptor.TYPE_ENUM: np.int32,
    FieldDescriptor.TYPE_INT64: np.int64,
    FieldDescriptor.TYPE_SINT64: np.int64,
    FieldDescriptor.TYPE_SFIXED64: np.int64,
    FieldDescriptor.TYPE_UINT32: np.uint32,
    FieldDescriptor.TYPE_FIXED32: np.uint32,
    FieldDescriptor.TYPE_UINT64: np.uint64,
    FieldDescriptor.TYPE_FIXED64: np.uint64,
    FieldDescriptor.TYPE_BOOL: np.bool_,
}


class RequestTypes:
    """The message types of one servable's request_proto, compiled into a pool of their own."""

    def __init__(self, proto_path: str):
        self.path = proto_path
        compiled = _compile(proto_path)
        pool = descriptor_pool.DescriptorPool()
        for file_proto in compiled.file:
            pool.Add(file_proto)
        self._classes: dict[str, Any] = {}
        for file_proto in compiled.file:
            package = f"{file_proto.package}." if file_proto.package else ""
            for message in file_proto.message_type:
                full_name = package + message.name
                self._classes[full_name] = message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))

    @property
    def names(self) -> list[str]:
        return sorted(self._classes)

    def message_class(self, full_name: str) -> Optional[Any]:
        return self._classes.get(full_name)


_types_cache: dict[str, RequestTypes] = {}  # by .proto path: each file is compiled once per process


def _compile(proto_path: str) -> descriptor_pb2.FileDescriptorSet:
    """The descriptor set of a .proto file (with its imports), made by grpcio-tools' protoc in a child process
    (its errors are then text to report, not lines on the server's stderr)."""
    try:
        from grpc_tools import protoc
    except ImportError:
        raise RuntimeError(
            f"seldon_classifier: compiling request_proto '{proto_path}' needs grpcio-tools: pip "
            f"install 'mindserve[seldon]'"
        ) from None
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "types.desc")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{os.path.dirname(proto_path)}",
                f"-I{include}",
                f"--descriptor_set_out={out}",
                "--include_imports",
                os.path.basename(proto_path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"seldon_classifier: request_proto '{proto_path}' does not compile: "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        with open(out, "rb") as f:
            return descriptor_pb2.FileDescriptorSet.FromString(f.read())


def request_types(proto_path: str) -> RequestTypes:
    """The compiled request types of a .proto file (compiled once per file and process)."""
    types = _types_cache.get(proto_path)
    if types is None:
        types = _types_cache[proto_path] = RequestTypes(proto_path)
    return types


def inputs_of(
    data: Any, input_names: tuple, types: Optional[RequestTypes], servable: str, method: str
) -> dict[str, RawTensor]:
    """The method's inputs from a request's ``data`` (an Any); InvalidInput naming what is wrong."""
    type_name = data.type_url.rpartition("/")[2]
    if not data.type_url:
        raise InvalidInput(
            f"The request has no data: send the inputs of servable {servable}, method {method} "
            f"({', '.join(input_names)}) as a google.protobuf.Struct in data"
        )
    if type_name == STRUCT_TYPE:
        struct = struct_pb2.Struct()
        _parse(struct, data.value, type_name)
        values = json_format.MessageToDict(struct)
        _check_names(set(values), input_names, type_name, servable, method)
        return {name: ms_values.to_tensor(name, values[name]) for name in input_names}
    message_class = types.message_class(type_name) if types is not None else None
    if message_class is None:
        known = ", ".join([STRUCT_TYPE] + (types.names if types is not None else []))
        raise InvalidInput(f"The request data is a {clip(type_name)}; servable {servable} takes {known}")
    message = message_class()
    _parse(message, data.value, type_name)
    fields = message.DESCRIPTOR.fields_by_name
    given = {field.name for field, _ in message.ListFields()}
    _check_names(given | {n for n in input_names if n in fields}, input_names, type_name, servable, method)
    return {name: _field_tensor(name, fields[name], getattr(message, name)) for name in input_names}


def _parse(message: Any, value: bytes, type_name: str) -> None:
    try:
        message.ParseFromString(value)
    except DecodeError:
        raise InvalidInput(f"The request data is not a valid {clip(type_name)} message") from None


def _check_names(given: set, input_names: tuple, type_name: str, servable: str, method: str) -> None:
    for name in input_names:
        if name not in given:
            raise InvalidInput(
                f"Cannot find input {name} in the request data ({clip(type_name)}), servable "
                f"{servable}, method {method}"
            )
    for name in sorted(given - set(input_names)):
        raise InvalidInput(
            f"Unexpected input {clip(name)} in the request data ({clip(type_name)}), servable "
            f"{servable}, method {method} takes {', '.join(input_names)}"
        )


def _field_tensor(name: str, field: FieldDescriptor, value: Any) -> RawTensor:
    if field.type == FieldDescriptor.TYPE_STRING and field.label != FieldDescriptor.LABEL_REPEATED:
        return RawTensor(_dtypes.MS_STRING, (), value.encode())
    if field.type == FieldDescriptor.TYPE_BYTES and field.label != FieldDescriptor.LABEL_REPEATED:
        return RawTensor(_dtypes.MS_BYTES, (), bytes(value))
    numpy_type = _NUMPY_OF_FIELD.get(field.type)
    if numpy_type is None:
        raise InvalidInput(
            f"Input {name}: a field of type {field.type} (a message, or repeated text) cannot be an "
            f"input; use numbers, bool, string or bytes"
        )
    array: np.ndarray = np.asarray(list(value) if field.label == FieldDescriptor.LABEL_REPEATED else value, numpy_type)
    return RawTensor(_dtypes.CODE_OF[array.dtype], array.shape, array.tobytes())
