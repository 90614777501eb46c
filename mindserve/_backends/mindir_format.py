"""Reads the inputs and outputs of a MindIR file, without MindSpore.

MindSpore's Python API does not report a loaded graph's inputs and outputs, but a MindIR file records them: it
is a protobuf ``mind_ir.ModelProto`` whose graph inputs carry name, data type and shape (-1 for a dim exported
as ``None``), and whose outputs carry the types MindSpore inferred at export. MindSpore ships a generated module
for that message (``mindspore.train.mind_ir_pb2``), but of the old generated kind, which the protobuf
implementation a worker already runs (upb, imported with grpc) refuses to load. So the few messages needed here
are described below, by the field numbers of mind_ir.proto, into a descriptor pool of mindserve's own; fields
not described are skipped when parsing.
"""

from __future__ import annotations

from typing import Any, Optional

from mindserve import _dtypes
from mindserve._backends.base import TensorSpec

# field types and labels of descriptor.proto's FieldDescriptorProto (protobuf itself is imported only when a
# file is read: see mindir.prepare_process)
_INT32, _INT64, _BOOL, _STRING, _MESSAGE = 5, 3, 8, 9, 11
_OPTIONAL, _REPEATED = 1, 3

# message -> [(field name, number, type, label, message type)], a subset of mind_ir.proto (proto2)
_MESSAGES: dict[str, Any] = {
    "TensorProto": [("dims", 1, _INT64, _REPEATED, None), ("data_type", 2, _INT32, _OPTIONAL, None)],
    "SeqInfoProto": [("is_dyn_len", 1, _BOOL, _OPTIONAL, None)],
    # type is the enum AttributeType on the wire (a varint), read here as its number
    "AttributeProto": [
        ("tensors", 12, _MESSAGE, _REPEATED, "TensorProto"),
        ("type", 16, _INT32, _OPTIONAL, None),
        ("values", 17, _MESSAGE, _REPEATED, "AttributeProto"),
        ("seq_info", 18, _MESSAGE, _OPTIONAL, "SeqInfoProto"),
    ],
    "ValueInfoProto": [
        ("name", 1, _STRING, _OPTIONAL, None),
        ("tensor", 2, _MESSAGE, _REPEATED, "TensorProto"),
        ("attr_info", 5, _MESSAGE, _OPTIONAL, "AttributeProto"),
    ],
    "NodeProto": [("op_type", 4, _STRING, _OPTIONAL, None)],
    "GraphProto": [
        ("node", 1, _MESSAGE, _REPEATED, "NodeProto"),
        ("input", 5, _MESSAGE, _REPEATED, "ValueInfoProto"),
        ("output", 6, _MESSAGE, _REPEATED, "ValueInfoProto"),
    ],
    "ModelProto": [("producer_name", 2, _STRING, _OPTIONAL, None), ("graph", 7, _MESSAGE, _OPTIONAL, "GraphProto")],
}

# AttributeProto.AttributeType numbers
_TENSORS, _TUPLE, _LIST = 19, 20, 21

# TensorProto.DataType numbers -> wire dtype codes (types without a numpy equivalent, such as BFLOAT16, are
# MS_UNKNOWN: no request can match them)
_CODE_OF_DATA_TYPE = {
    1: _dtypes.MS_FLOAT32,
    2: _dtypes.MS_UINT8,
    3: _dtypes.MS_INT8,
    4: _dtypes.MS_UINT16,
    5: _dtypes.MS_INT16,
    6: _dtypes.MS_INT32,
    7: _dtypes.MS_INT64,
    9: _dtypes.MS_BOOL,
    10: _dtypes.MS_FLOAT16,
    11: _dtypes.MS_FLOAT64,
    12: _dtypes.MS_UINT32,
    13: _dtypes.MS_UINT64,
    17: _dtypes.MS_FLOAT64,
}

_model_class = None


def _model_proto_class():
    """The ModelProto message class, built once in a private pool (nothing registered in protobuf's default)."""
    global _model_class
    if _model_class is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        file = descriptor_pb2.FileDescriptorProto(
            name="mindserve_mind_ir_subset.proto", package="mind_ir", syntax="proto2"
        )
        for name, fields in _MESSAGES.items():
            message = file.message_type.add(name=name)
            for field_name, number, kind, label, type_name in fields:
                field = message.field.add(name=field_name, number=number, type=kind, label=label)
                if type_name:
                    field.type_name = ".mind_ir." + type_name
        pool = descriptor_pool.DescriptorPool()
        pool.Add(file)
        _model_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("mind_ir.ModelProto"))
    return _model_class


def _spec(name: str, tensor) -> TensorSpec:
    code = _CODE_OF_DATA_TYPE.get(tensor.data_type, _dtypes.MS_UNKNOWN)
    return TensorSpec(name, code, tuple(d if d >= 0 else -1 for d in tensor.dims))


def _flatten(attr, found: list) -> bool:
    """Append the tensors an output's AttributeProto describes (nested tuples in order) to ``found``; False when
    it describes anything else (a scalar, a sequence of variable length, ...)."""
    if attr.type == _TENSORS:
        found.extend(attr.tensors)
        return len(attr.tensors) > 0
    if attr.type in (_TUPLE, _LIST):
        if attr.HasField("seq_info") and attr.seq_info.is_dyn_len:
            return False
        return all(_flatten(value, found) for value in attr.values)
    return False


def read_specs(path: str, data: Optional[bytes] = None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs of the MindIR file at ``path`` (or of its bytes ``data``). Inputs keep the names
    given at export; a tuple output (nested tuples too) gives one output per tensor, in order, named
    ``output_0``, ``output_1``... (the file names no outputs). Raises RuntimeError for a file that is not a MindIR
    model, or one whose inputs or outputs are not tensors."""
    from google.protobuf.message import DecodeError

    if data is None:
        with open(path, "rb") as f:
            data = f.read()
    model = _model_proto_class()()
    try:
        model.ParseFromString(data)
    except DecodeError:
        model = None
    if model is None or not model.HasField("graph") or not model.graph.node:
        raise RuntimeError(
            f"'{path}' is not a MindIR model file (it does not parse as MindSpore's ModelProto with a graph)"
        )
    inputs = []
    for value in model.graph.input:
        name = value.name.rsplit(":", 1)[-1]  # "7_1___main___Net_construct_4:x" -> "x"
        if len(value.tensor) != 1:
            raise RuntimeError(f"MindIR input '{name}' is not a tensor; only tensor inputs can be served")
        inputs.append(_spec(name, value.tensor[0]))
    tensors: list = []
    for value in model.graph.output:
        if len(value.tensor) == 1:
            tensors.append(value.tensor[0])
        elif not _flatten(value.attr_info, tensors):
            raise RuntimeError(
                "the MindIR graph's output is not a tensor or a tuple of tensors of fixed length; "
                "only such outputs can be served"
            )
    return inputs, [_spec(f"output_{i}", t) for i, t in enumerate(tensors)]
