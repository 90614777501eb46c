"""ModelInfer read and written in place: the Open Inference Protocol's counterpart of ``ms_wire`` and
``ms_reply``.

Requests: the C core reads a common ModelInferRequest (see native/infer_wire.h: raw inputs, no parameters, no
typed contents) straight from its wire bytes, and each input becomes a RawInput over a view of those bytes. The
inputs are then checked and cut into instances like any other (``oip.tensors``), and their rows go from the
request into a worker's arena: no protobuf objects and no copy of the data on the way. Whatever is not common
returns None, and the caller parses the request with protobuf, which also gives the precise error.

Replies: a ModelInferResponse is written directly, each output's data joined into the message once (protobuf's
Python API would copy it into the message and again to serialize it). Both request paths answer through it.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Optional, Sequence

from mindserve._frontends.grpc.wire_write import field, text_field, varint
from mindserve._frontends.oip.tensors import InputTensor, OutputTensor, RawInput, join_bytes
from mindserve._native import ffi, lib

_NO_PARAMETERS: Mapping = {}


class InferCall(NamedTuple):
    """What a ModelInfer request asks, however it was read: the model, version and id as given, what makes its
    input tensors (called once the model is known good), and the outputs it requests, each
    ``(name, parameters)``."""

    model_name: str
    model_version: str
    id: str
    inputs: Callable[[], Sequence[InputTensor]]
    outputs: list[tuple[str, Mapping]]


class InferReader:
    """Reads common ModelInferRequests; serves one thread (its event loop) at a time."""

    def __init__(self) -> None:
        self._head = ffi.new("ms_infer_head *")
        self._inputs = ffi.new("ms_infer_input[]", lib.MS_INFER_MAX_TENSORS)
        self._outputs = ffi.new("ms_span[]", lib.MS_INFER_MAX_TENSORS)

    def read(self, data: bytes) -> Optional[InferCall]:
        """The request, when it is common; None otherwise (and for strings that are not UTF-8, which protobuf
        refuses with its own error)."""
        head = self._head
        if lib.ms_infer_common_parse(ffi.from_buffer(data), len(data), head, self._inputs, self._outputs) != lib.MS_OK:
            return None
        view = memoryview(data)
        try:
            inputs: list[InputTensor] = []
            for k in range(head.n_inputs):
                spec = self._inputs[k]
                inputs.append(
                    RawInput(
                        _text(data, spec.name),
                        _text(data, spec.datatype),
                        tuple(spec.dims[0 : spec.ndims]),
                        view[spec.data.offset : spec.data.offset + spec.data.size],
                    )
                )
            outputs = [(_text(data, self._outputs[j]), _NO_PARAMETERS) for j in range(head.n_outputs)]
            return InferCall(
                _text(data, head.model_name),
                _text(data, head.model_version),
                _text(data, head.id),
                inputs.copy,
                outputs,
            )
        except UnicodeDecodeError:
            return None


def _text(data: bytes, span) -> str:
    return data[span.offset : span.offset + span.size].decode() if span.size else ""


def encode_response(model_name: str, model_version: str, request_id: str, outputs: Sequence[OutputTensor]) -> bytes:
    """A serialized ModelInferResponse: model_name = 1, model_version = 2, id = 3, outputs = 5 (InferOutputTensor
    {name = 1, datatype = 2, shape = 3 packed}), raw_output_contents = 6 (one entry per output, in order)."""
    parts: list = [text_field(0x0A, model_name), text_field(0x12, model_version), text_field(0x1A, request_id)]
    for out in outputs:
        dims = b"".join(varint(d) for d in out.shape)
        tensor = text_field(0x0A, out.name) + text_field(0x12, out.datatype) + (field(0x1A, dims) if dims else b"")
        parts.append(field(0x2A, tensor))
    for out in outputs:
        data = join_bytes(out.items) if out.items is not None else (out.data if out.data is not None else b"")
        parts.append(b"\x32" + varint(len(data)))
        parts.append(data)
    return b"".join(parts)
