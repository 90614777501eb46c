"""The KServe v2 REST inference request and response, with the binary tensor data extension.

A request body is a JSON document, or (with the header ``Inference-Header-Content-Length: N``) N bytes of JSON
followed by the raw data of the inputs whose ``parameters.binary_data_size`` says how many bytes each takes, in
the order of ``inputs``. Raw data is what gRPC's ``raw_input_contents`` holds: little-endian, row-major, a BYTES
element as a 4-byte little-endian length and its bytes.

JSON tensor data (``data``) is flat or nested as the shape; numbers for the numeric types, booleans for BOOL,
strings for BYTES. An output is answered raw when the request asks for it (the output's ``binary_data``
parameter, or else the request's ``binary_data_output``), else as JSON; a reply with raw outputs carries the
same header and content type ``application/octet-stream``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

from aiohttp import web

from mindserve import _dtypes
from mindserve._errors import InvalidInput, clip
from mindserve._frontends import json_tensors
from mindserve._frontends.oip.tensors import InputTensor, OutputTensor, RawInput, join_bytes
from mindserve._frontends.rest.common import HttpError, dumps, parse_json
from mindserve._frontends.shared_memory.regions import Lease
from mindserve._frontends.shared_memory.tensors import shared_input
from mindserve._frontends.tensor_checks import invalid_input

HEADER_LENGTH = "Inference-Header-Content-Length"

_REQUEST_KEYS = ("id", "parameters", "inputs", "outputs")
_INPUT_KEYS = ("name", "shape", "datatype", "parameters", "data")
_OUTPUT_KEYS = ("name", "parameters")


class InferRequest(NamedTuple):
    id: Optional[str]
    inputs: list  # InputTensor each
    outputs: list  # (name, parameters) each, as the request names them
    binary: dict  # output name -> whether to answer it raw
    binary_default: bool  # for the outputs the request does not name
    parameters: dict  # the request's own (``timeout``, ...)


class JsonInput(InputTensor):
    """A tensor whose data came as JSON (``data``)."""

    def __init__(self, name: str, datatype: str, shape: tuple, data: Any, as_str: bool):
        super().__init__(name, datatype, shape, as_str)
        self.data = data

    def _elements(self) -> list:
        """The elements, flat; nested data must have the tensor's shape. Counted before anything is made."""
        shape, flat = json_tensors.nested(self.name, self.data)
        if len(shape) > 1 and shape != self.shape:
            raise invalid_input(
                self.name,
                f"Tensor check failed: input data is nested as shape {list(shape)}, but "
                f"the input's shape is {list(self.shape)}",
            )
        count = math.prod(self.shape)
        if len(flat) != count:
            raise invalid_input(
                self.name,
                f"Tensor check failed: input data holds {len(flat)} elements, shape {list(self.shape)} needs {count}",
            )
        return flat

    def numeric_data(self, code: int) -> bytes:
        return json_tensors.pack_numbers(self.name, self._elements(), code, self.datatype)

    def bytes_items(self, count: int) -> list:
        flat = self._elements()
        types = json_tensors.kinds(flat)
        if not types <= {str}:
            raise invalid_input(
                self.name,
                f"Tensor check failed: BYTES input data should be JSON strings, but it "
                f"holds {json_tensors.describe(types - {str})}",
            )
        return [json_tensors.encode_text(self.name, item) for item in flat]


def _object(value: Any, what: str, keys: tuple) -> dict:
    if type(value) is not dict:
        raise InvalidInput(f"{what} should be a JSON object")
    for key in value:
        if key not in keys:
            raise InvalidInput(f"{what} has the unknown key '{clip(key)}': it takes {', '.join(keys)}")
    return value


def _parameters(value: dict, what: str) -> dict:
    parameters = value.get("parameters", {})
    if type(parameters) is not dict:
        raise InvalidInput(f"The parameters of {what} should be a JSON object")
    return parameters


def _flag(parameters: dict, key: str, what: str) -> Optional[bool]:
    flag = parameters.get(key)
    if flag is not None and type(flag) is not bool:
        raise InvalidInput(f"Parameter {clip(key)} of {what} should be true or false")
    return flag


def parse_request(body: bytes, header_length: Optional[str], lease: Optional[Lease] = None) -> InferRequest:
    """The inference request in ``body`` (``lease`` holds the shared memory regions its tensors name; None: the
    server takes no client shared memory): its structure checked here, its tensors' data when they are used."""
    binary = memoryview(b"")
    text = body
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
            raise HttpError(
                400,
                f"{HEADER_LENGTH} '{clip(header_length)}' invalid: it should be the byte size of the "
                f"JSON at the start of the {len(body)}-byte body",
            )
        size = int(header_length)
        text, binary = body[:size], memoryview(body)[size:]
    document = _object(parse_json(text), "The inference request", _REQUEST_KEYS)
    request_id = document.get("id")
    if request_id is not None and type(request_id) is not str:
        raise InvalidInput("The id of the inference request should be a JSON string")
    request_parameters = _parameters(document, "the inference request")
    binary_default = bool(_flag(request_parameters, "binary_data_output", "the inference request"))
    inputs_doc = document.get("inputs")
    if type(inputs_doc) is not list:
        raise InvalidInput("The inference request should have inputs, a JSON array of tensors")
    inputs: list = []
    offset = 0
    for k, entry in enumerate(inputs_doc):
        tensor, taken = _input(entry, k, binary, offset, lease)
        inputs.append(tensor)
        offset += taken
    if offset != len(binary):
        raise InvalidInput(
            f"The request holds {len(binary) - offset} bytes of binary data after its JSON that no "
            f"input's binary_data_size claims"
        )
    outputs, flags = [], {}
    outputs_doc = document.get("outputs", [])
    if type(outputs_doc) is not list:
        raise InvalidInput("The outputs of the inference request should be a JSON array")
    for k, entry in enumerate(outputs_doc):
        entry = _object(entry, f"Output {k} of the inference request", _OUTPUT_KEYS)
        name = entry.get("name")
        if type(name) is not str:
            raise InvalidInput(f"Output {k} of the inference request should have a name, a JSON string")
        parameters = _parameters(entry, f"output {clip(name)}")
        flag = _flag(parameters, "binary_data", f"output {clip(name)}")
        flags[name] = binary_default if flag is None else flag
        outputs.append((name, parameters))
    return InferRequest(request_id, inputs, outputs, flags, binary_default, request_parameters)


def _input(entry: Any, k: int, binary: memoryview, offset: int, lease: Optional[Lease]) -> tuple[InputTensor, int]:
    """Input ``k``, and how many bytes of binary data (from ``offset``) it takes."""
    entry = _object(entry, f"Input {k} of the inference request", _INPUT_KEYS)
    name = entry.get("name")
    if type(name) is not str:
        raise InvalidInput(f"Input {k} of the inference request should have a name, a JSON string")
    datatype = entry.get("datatype")
    if type(datatype) is not str:
        raise InvalidInput(f"Input {clip(name)} should have a datatype, a JSON string")
    if "shape" not in entry:
        raise InvalidInput(f"Input {clip(name)} should have a shape, a JSON array of integers")
    shape = json_tensors.check_dims(name, entry["shape"])
    parameters = _parameters(entry, f"input {clip(name)}")
    shared = shared_input(lease, name, datatype, shape, parameters)
    if shared is not None:
        if "data" in entry or "binary_data_size" in parameters:
            raise InvalidInput(f"Input {clip(name)} has both shared memory and data: give one")
        return shared, 0
    as_str = parameters.get("content_type") == "str"
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in entry:
            raise InvalidInput(f"Input {clip(name)} has neither data nor parameters.binary_data_size")
        return JsonInput(name, datatype, shape, entry["data"], as_str), 0
    if type(size) is not int or size < 0:
        raise InvalidInput(f"Parameter binary_data_size of input {clip(name)} should be an integer >= 0")
    if "data" in entry:
        raise InvalidInput(f"Input {clip(name)} has both data and parameters.binary_data_size: give one")
    if size > len(binary) - offset:
        raise InvalidInput(
            f"Input {clip(name)} declares binary_data_size {size}, but {len(binary) - offset} bytes of "
            f"binary data are left"
        )
    return RawInput(name, datatype, shape, binary[offset : offset + size], as_str), size


def response(model_name: str, version: int, request: InferRequest, outputs: list[OutputTensor]) -> web.Response:
    """The inference response: raw outputs after the JSON where asked for, JSON data otherwise."""
    document: dict = {"model_name": model_name, "model_version": str(version)}
    if request.id is not None:
        document["id"] = request.id
    entries, chunks = [], []
    for out in outputs:
        entry: dict = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if out.items is None and out.data is None:
            pass  # written into the client's shared memory: its data type and shape only
        elif request.binary.get(out.name, request.binary_default):
            data = join_bytes(out.items) if out.items is not None else bytes(out.data or b"")
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        elif out.items is None:
            entry["data"] = json_tensors.to_list(
                _dtypes.CODE_OF_OIP_NAME[out.datatype], (math.prod(out.shape),), out.data
            )
        else:
            entry["data"] = _texts(out)
        entries.append(entry)
    document["outputs"] = entries
    header = dumps(document)
    if not chunks:
        return web.Response(body=header, content_type="application/json")
    return web.Response(
        body=b"".join([header, *chunks]),
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def _texts(out: OutputTensor) -> list:
    try:
        return [item.decode() for item in out.items or ()]
    except UnicodeDecodeError:
        raise InvalidInput(
            f"Output {out.name} holds bytes that are not UTF-8 text, which JSON cannot carry: ask for "
            f"it with the parameter binary_data: true"
        ) from None
