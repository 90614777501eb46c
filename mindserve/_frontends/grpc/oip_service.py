"""``inference.GRPCInferenceService``: the Open Inference Protocol (KServe v2, Triton's gRPC protocol) on the same
gRPC server as MSService, so that standard clients such as ``tritonclient.grpc`` work unchanged.

Models and versions:
- every (servable, method) is the model ``servable.method``; a servable with a single method also answers to its
  bare name. ``model_version`` picks the servable version: empty (or "0", as in MSService) is the newest version
  with a live worker.

Tensors:
- dim 0 of every input is the instance: instance i gets ``input[i]`` of every input, so all inputs agree on dim 0;
  each output stacks the instances' results along dim 0 (they must agree in data type and shape).
- data comes in ``raw_input_contents`` (one entry per input, little-endian, row-major; a BYTES element is a 4-byte
  little-endian length and its bytes) or in the typed ``contents``; replies use ``raw_output_contents``.
- a BYTES input carries one element per instance (shape ``[N]`` or ``[N, 1]``). Python stages get it as
  ``bytes``, or as ``str`` when the method input feeds a string model input or the tensor has the parameter
  ``content_type: "str"`` (MLServer's convention); str and bytes outputs both answer as BYTES of shape ``[N]``.

Errors: a gRPC status and a text, never UNKNOWN. NOT_FOUND for an unknown model or version, INVALID_ARGUMENT for a
malformed request or bad inputs (MSService's texts), UNAVAILABLE when no worker is alive, RESOURCE_EXHAUSTED for
a full queue, INTERNAL for failures inside the servable or the server. The protocol has no per-instance error:
the first failed instance fails the whole call.
"""
from __future__ import annotations

import logging
import math
import struct
from typing import Any, Awaitable, Callable, Optional

import grpc
import numpy as np

import mindserve
from mindserve import _dtypes
from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._errors import (INVALID_INPUTS, QUEUE_FULL_MESSAGE_PREFIX, SERVABLE_UNAVAILABLE,
                               WORKER_UNAVAILABLE, ServingError)
from mindserve._frontends.grpc.ms_tensors import check_data_size, check_dims, check_utf8, invalid_input
from mindserve._frontends.grpc.strict_parse import InvalidMessage, parse_strict
from mindserve._proto import grpc_inference as oip
from mindserve._supervision.servable_workers import ServableWorkers
from mindserve._tensor import RawTensor

log = logging.getLogger("mindserve")

SERVICE_NAME = oip.SERVICE_NAME
SERVER_NAME = "mindserve"
PLATFORM = "mindserve"
# Protocol extensions this server implements. binary_tensor_data is an HTTP/REST extension (raw tensor bytes in
# the HTTP body); over gRPC raw contents are part of the core protocol, so none is claimed here.
EXTENSIONS: tuple[str, ...] = ()

# the most instances one request may carry (dim 0 of its inputs)
MAX_INSTANCES = 1 << 16

_TEXT_TYPES = (_dtypes.MS_STRING, _dtypes.MS_BYTES)
_LENGTH = struct.Struct("<I")

# the InferTensorContents field of each data type: the protocol widens the small integer types to 32 bits and
# has no field for FP16 (FP16 data only comes raw)
_CONTENTS_FIELD = {
    _dtypes.MS_BOOL: "bool_contents",
    _dtypes.MS_INT8: "int_contents", _dtypes.MS_INT16: "int_contents", _dtypes.MS_INT32: "int_contents",
    _dtypes.MS_INT64: "int64_contents",
    _dtypes.MS_UINT8: "uint_contents", _dtypes.MS_UINT16: "uint_contents", _dtypes.MS_UINT32: "uint_contents",
    _dtypes.MS_UINT64: "uint64_contents",
    _dtypes.MS_FLOAT32: "fp32_contents", _dtypes.MS_FLOAT64: "fp64_contents",
    _dtypes.MS_BYTES: "bytes_contents",
}
_ALL_CONTENTS_FIELDS = ("bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                        "fp32_contents", "fp64_contents", "bytes_contents")
# the numpy type each contents field holds, before narrowing to the tensor's type
_FIELD_DTYPE = {"bool_contents": np.dtype(np.bool_), "int_contents": np.dtype("<i4"),
                "int64_contents": np.dtype("<i8"), "uint_contents": np.dtype("<u4"),
                "uint64_contents": np.dtype("<u8"), "fp32_contents": np.dtype("<f4"),
                "fp64_contents": np.dtype("<f8")}

# the parameter that puts a tensor in a registered shared memory region (Triton's shared memory extensions):
# not offered to remote clients, as in MSService
_SHM_PARAMETER = "shared_memory_region"
_SHM_DETAIL = "Tensor check failed: shared memory tensor data is not supported by this server"

_STATUS_OF_CODE = {
    INVALID_INPUTS: grpc.StatusCode.INVALID_ARGUMENT,
    WORKER_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    SERVABLE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}


def status_of(error: ServingError) -> grpc.StatusCode:
    """The gRPC status that answers a ServingError: RESOURCE_EXHAUSTED for a full queue (told by its text),
    INVALID_ARGUMENT for bad inputs, UNAVAILABLE when no worker is alive, INTERNAL for everything else (failures
    in the servable's stages or models, system errors)."""
    if error.message.startswith(QUEUE_FULL_MESSAGE_PREFIX):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return _STATUS_OF_CODE.get(error.code, grpc.StatusCode.INTERNAL)


class OipError(Exception):
    """An error of this frontend's own, answered with ``status`` and ``message``."""

    def __init__(self, status: grpc.StatusCode, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _not_found(message: str) -> OipError:
    return OipError(grpc.StatusCode.NOT_FOUND, message)


def _bad_request(message: str) -> OipError:
    return OipError(grpc.StatusCode.INVALID_ARGUMENT, message)


class _Model:
    """A model name resolved to a servable method, with every started version of the servable."""

    def __init__(self, name: str, servable: str, method: str, groups: dict[int, ServableWorkers]):
        self.name = name
        self.servable = servable
        self.method = method
        self.groups = groups

    def versions(self) -> list[int]:
        return sorted(v for v, g in self.groups.items() if self.method in g.methods)

    def group(self, version: int) -> ServableWorkers:
        """The version asked for; for 0 the newest with a live worker, else the newest. NOT_FOUND when the
        servable has no such version."""
        if version == 0:
            versions = self.versions()
            live = [v for v in versions if self.groups[v].ready]
            return self.groups[max(live or versions)]
        group = self.groups.get(version)
        if group is None or self.method not in group.methods:
            running = ", ".join(str(v) for v in self.versions())
            raise _not_found(f"Model '{self.name}' version {version} is not found, running versions: {running}")
        return group


def _version_number(model_name: str, text: str) -> int:
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise _bad_request(f"Model '{model_name}' version '{text}' is not a version number")
    return int(text)


def _tensor_metadata(entry: Any, name: str, spec: Optional[dict]) -> None:
    """Fill a TensorMetadata: dim 0 is the instance (-1, any count) followed by the per-instance shape. Where no
    model fixes the tensor (a Python stage takes or makes it) the data type is "" and the shape only [-1]."""
    entry.name = name
    spec = spec or {}
    entry.datatype = _dtypes.OIP_NAME_OF.get(spec.get("dtype"), "")
    shape = spec.get("shape")
    entry.shape.append(-1)
    if shape is not None:
        entry.shape.extend(shape)


def _split_bytes(name: str, data: bytes, dims: tuple, count: int) -> list[bytes]:
    """The elements of a raw BYTES tensor (each a 4-byte little-endian length and that many bytes); every length
    is checked against the bytes left, and parsing stops past ``count`` elements."""
    items = []
    offset, size = 0, len(data)
    while offset < size and len(items) <= count:
        if size - offset < 4:
            raise invalid_input(name, f"Tensor check failed: BYTES input data is malformed, element {len(items)} "
                                      f"has {size - offset} of its 4 length bytes")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += 4
        if length > size - offset:
            raise invalid_input(name, f"Tensor check failed: BYTES input data is malformed, element {len(items)} "
                                      f"declares {length} bytes, {size - offset} are left")
        items.append(data[offset:offset + length])
        offset += length
    if len(items) != count or offset != size:
        held = f"more than {count}" if len(items) > count else str(len(items))
        raise invalid_input(name, f"Tensor check failed: BYTES input data holds {held} elements, shape "
                                  f"{list(dims)} needs {count}")
    return items


def _typed_contents(name: str, datatype: str, code: int, dims: tuple, contents: Any) -> Any:
    """The elements of ``contents`` for a tensor of type ``code``: little-endian bytes for numbers, a list of
    bytes for BYTES. The element count is checked against the shape before any conversion."""
    field = _CONTENTS_FIELD.get(code)
    if field is None:
        raise invalid_input(name, f"Tensor check failed: {datatype} input data can only be given in "
                                  f"raw_input_contents")
    for other in _ALL_CONTENTS_FIELDS:
        if other != field and len(getattr(contents, other)):
            raise invalid_input(name, f"Tensor check failed: {datatype} input data belongs in contents.{field}, "
                                      f"not contents.{other}")
    values = getattr(contents, field)
    count = math.prod(dims)
    if len(values) != count:
        raise invalid_input(name, f"Tensor check failed: input contents count {len(values)} invalid, shape "
                                  f"{list(dims)} needs {count} elements")
    if code == _dtypes.MS_BYTES:
        return list(values)
    wide = np.fromiter(values, _FIELD_DTYPE[field], count=count)
    target = _dtypes.NUMPY_OF[code]
    if target != wide.dtype:  # INT8/16 and UINT8/16 come widened to 32 bits: narrow only values that fit
        info = np.iinfo(target)
        if count and (wide.min() < info.min or wide.max() > info.max):
            raise invalid_input(name, f"Tensor check failed: input contents value out of the range of {datatype}")
        wide = wide.astype(target)
    return wide.tobytes()


def _join_text(items: list) -> bytes:
    parts = []
    for data in items:
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


class OipServiceHandler:
    """The GRPCInferenceService handlers; they take and return serialized messages so that parsing errors are
    this frontend's own (INVALID_ARGUMENT with a text, never UNKNOWN)."""

    def __init__(self, dispatcher: Dispatcher):
        self._dispatcher = dispatcher

    def rpc_handlers(self) -> grpc.GenericRpcHandler:
        """The generic handler of every RPC this server answers (the others are UNIMPLEMENTED)."""
        rpcs = {
            "ServerLive": (oip.ServerLiveRequest, self._server_live),
            "ServerReady": (oip.ServerReadyRequest, self._server_ready),
            "ServerMetadata": (oip.ServerMetadataRequest, self._server_metadata),
            "ModelReady": (oip.ModelReadyRequest, self._model_ready),
            "ModelMetadata": (oip.ModelMetadataRequest, self._model_metadata),
            "ModelInfer": (oip.ModelInferRequest, self._model_infer),
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            name: grpc.unary_unary_rpc_method_handler(self._unary(name, message_class, impl))
            for name, (message_class, impl) in rpcs.items()})

    @staticmethod
    def _unary(rpc: str, message_class: type, impl: Callable[[Any], Awaitable[Any]]):
        async def handle(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            # context.abort raises; it is called outside the try blocks so that nothing here catches it
            try:
                request = parse_strict(message_class, data)
            except InvalidMessage as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            try:
                return (await impl(request)).SerializeToString()
            except OipError as err:
                status, message = err.status, err.message
            except ServingError as err:
                status, message = status_of(err), err.message
            except Exception as exc:  # a defect of ours: answer it plainly, never with a traceback
                log.exception("%s failed", rpc)
                status, message = grpc.StatusCode.INTERNAL, f"{rpc} failed: {exc}"
            await context.abort(status, message)
        return handle

    # ---- server and model state ------------------------------------------------------------------------------

    async def _server_live(self, request: Any) -> Any:
        return oip.ServerLiveResponse(live=True)

    async def _server_ready(self, request: Any) -> Any:
        """Ready while every started servable version has a live worker (vacuously true with none)."""
        return oip.ServerReadyResponse(ready=all(g.ready for g in self._dispatcher.groups()))

    async def _server_metadata(self, request: Any) -> Any:
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=mindserve.__version__, extensions=EXTENSIONS)

    async def _model_ready(self, request: Any) -> Any:
        """Whether the model (the version asked for, or any version) has a live worker; false for a model or
        version that is not served, so that clients can poll for it."""
        version = _version_number(request.name, request.version)
        try:
            model = self._find_model(request.name)
            group = model.group(version)
        except OipError as err:
            if err.status == grpc.StatusCode.NOT_FOUND:
                return oip.ModelReadyResponse(ready=False)
            raise
        return oip.ModelReadyResponse(ready=group.ready)

    async def _model_metadata(self, request: Any) -> Any:
        model = self._find_model(request.name)
        group = model.group(_version_number(request.name, request.version))
        signature = group.methods[model.method]
        reply = oip.ModelMetadataResponse(name=request.name, platform=PLATFORM,
                                          versions=[str(v) for v in model.versions()])
        for names, specs, entries in ((signature["inputs"], signature.get("input_specs"), reply.inputs),
                                      (signature["outputs"], signature.get("output_specs"), reply.outputs)):
            for k, name in enumerate(names):
                _tensor_metadata(entries.add(), name, specs[k] if specs and k < len(specs) else None)
        return reply

    def _servable_groups(self, servable: str) -> dict[int, ServableWorkers]:
        return {g.version: g for g in self._dispatcher.groups() if g.name == servable}

    def _find_model(self, model_name: str) -> _Model:
        """``servable`` (a servable with one method) or ``servable.method``; NOT_FOUND otherwise."""
        groups = self._servable_groups(model_name)
        if groups:
            methods = sorted({m for g in groups.values() for m in g.methods})
            if len(methods) == 1:
                return _Model(model_name, model_name, methods[0], groups)
            raise _not_found(f"Model '{model_name}' is not found: servable {model_name} has {len(methods)} methods, "
                             f"name one as '{model_name}.<method>' ({', '.join(methods)})")
        servable, dot, method = model_name.rpartition(".")
        groups = self._servable_groups(servable) if dot else {}
        if any(method in g.methods for g in groups.values()):
            return _Model(model_name, servable, method, groups)
        raise _not_found(f"Model '{model_name}' is not found, models are named 'servable.method', or 'servable' "
                         f"for a servable with a single method")

    # ---- inference ---------------------------------------------------------------------------------------------

    async def _model_infer(self, request: Any) -> Any:
        model = self._find_model(request.model_name)
        version = _version_number(request.model_name, request.model_version)
        if version:
            model.group(version)  # NOT_FOUND for a version that is not served, before "not available"
        group, signature = self._dispatcher.resolve(model.servable, model.method, version)
        selected = self._selected_outputs(request, signature, model)
        instances = self._instances(request, signature, model)
        results = await self._dispatcher.run(group, model.method, instances)
        for result in results:
            if isinstance(result, ServingError):
                raise result  # the protocol has no per-instance error: the first one fails the call
        reply = oip.ModelInferResponse(model_name=request.model_name, model_version=str(group.version),
                                       id=request.id)
        for name in selected:
            self._add_output(reply, name, [r[name] for r in results])
        return reply

    @staticmethod
    def _selected_outputs(request: Any, signature: dict, model: _Model) -> list[str]:
        names = signature["outputs"]
        if not request.outputs:
            return list(names)
        selected = []
        for output in request.outputs:
            if output.name not in names:
                raise _bad_request(f"Cannot find output {output.name} in the outputs of servable {model.servable}, "
                                   f"method {model.method}: {', '.join(names)}")
            if output.name in selected:
                raise _bad_request(f"Output {output.name} is requested more than once")
            if _SHM_PARAMETER in output.parameters:
                raise _bad_request(f"Output {output.name}: shared memory tensor data is not supported by this server")
            if "classification" in output.parameters:
                raise _bad_request(f"Output {output.name}: the classification extension is not supported")
            selected.append(output.name)
        return selected

    def _instances(self, request: Any, signature: dict, model: _Model) -> list[dict[str, RawTensor]]:
        """The request's inputs cut into instances along dim 0, every size checked before the data is used."""
        tensors = request.inputs
        raw = request.raw_input_contents
        position: dict[str, int] = {}
        for k, tensor in enumerate(tensors):
            if tensor.name in position:
                raise _bad_request(f"Input {tensor.name} is given more than once")
            if _SHM_PARAMETER in tensor.parameters:
                raise invalid_input(tensor.name, _SHM_DETAIL)
            if raw and tensor.HasField("contents"):
                raise _bad_request(f"Input {tensor.name} has contents while the request uses raw_input_contents: "
                                   f"give all inputs one way")
            position[tensor.name] = k
        if raw and len(raw) != len(tensors):
            raise _bad_request(f"raw_input_contents holds {len(raw)} entries for {len(tensors)} inputs: it needs "
                               f"one per input, in the order of inputs")
        names = signature["inputs"]
        for name in names:
            if name not in position:
                raise ServingError(INVALID_INPUTS, f"Cannot find input {name} in request inputs , servable "
                                                   f"{model.servable}, method {model.method}")
        for name in position:
            if name not in names:
                raise _bad_request(f"Unexpected input {name} in request inputs , servable {model.servable}, "
                                   f"method {model.method} takes {', '.join(names)}")
        count = self._instance_count(tensors, names, position, model)
        specs = signature.get("input_specs") or [None] * len(names)
        # every input's data is checked against its shape (in _column) before any per-instance object is made
        columns = [self._column(name, tensors[position[name]], raw[position[name]] if raw else None, count, spec)
                   for name, spec in zip(names, specs)]
        if not names:
            return [{}]
        return [dict(zip(names, items)) for items in zip(*columns)]

    @staticmethod
    def _instance_count(tensors: Any, names: list, position: dict, model: _Model) -> int:
        """Dim 0 of the inputs: the same for all of them, and at least 1."""
        if not names:
            return 1
        count = None
        first = ""
        for name in names:
            dims = tuple(tensors[position[name]].shape)
            check_dims(name, dims)
            if not dims:
                raise invalid_input(name, "Tensor check failed: input shape [] invalid, dim 0 is the instances")
            if count is None:
                count, first = dims[0], name
            elif dims[0] != count:
                raise invalid_input(name, f"Tensor check failed: input dim 0 (instances) is {dims[0]}, but input "
                                          f"{first} has {count}")
        if count == 0:
            raise ServingError(INVALID_INPUTS, f"Instances count of request cannot be 0, servable: {model.servable}, "
                                               f"method: {model.method}")
        if count > MAX_INSTANCES:
            # instances whose tensors hold no elements cost no request bytes: bound their number here
            raise ServingError(INVALID_INPUTS, f"Instances count {count} of request exceeds the limit {MAX_INSTANCES}, "
                                               f"servable: {model.servable}, method: {model.method}")
        return count

    @staticmethod
    def _column(name: str, tensor: Any, raw: Optional[bytes], count: int, spec: Optional[dict]) -> list[RawTensor]:
        """One input's tensor as ``count`` instance tensors."""
        dims = tuple(tensor.shape)
        datatype = tensor.datatype
        code = _dtypes.CODE_OF_OIP_NAME.get(datatype)
        if code is None:
            raise invalid_input(name, f"Tensor check failed: input data type {datatype or '(empty)'} invalid")
        if code == _dtypes.MS_BYTES:
            if dims not in ((count,), (count, 1)):
                raise invalid_input(name, f"Tensor check failed: BYTES input shape can only be [N] or [N, 1], one "
                                          f"element per instance, but given shape is {list(dims)}")
            items = (_split_bytes(name, raw, dims, count) if raw is not None
                     else _typed_contents(name, datatype, code, dims, tensor.contents))
            as_str = (spec or {}).get("dtype") == _dtypes.MS_STRING or (
                "content_type" in tensor.parameters and tensor.parameters["content_type"].string_param == "str")
            if as_str:
                for item in items:
                    check_utf8(name, item)
                return [RawTensor(_dtypes.MS_STRING, (), item) for item in items]
            return [RawTensor(_dtypes.MS_BYTES, (), item) for item in items]
        if raw is not None:
            check_data_size(name, code, dims, len(raw))
            data = memoryview(raw)
        else:
            data = memoryview(_typed_contents(name, datatype, code, dims, tensor.contents))
        row = len(data) // count
        shape = dims[1:]
        return [RawTensor(code, shape, data[i * row:(i + 1) * row]) for i in range(count)]

    @staticmethod
    def _add_output(reply: Any, name: str, items: list[RawTensor]) -> None:
        """Stack the instances' values of output ``name`` along dim 0."""
        first = items[0]
        text = first.dtype in _TEXT_TYPES
        for i, item in enumerate(items):
            if (item.dtype in _TEXT_TYPES) != text or (not text and (item.dtype != first.dtype
                                                                     or tuple(item.shape) != tuple(first.shape))):
                raise OipError(grpc.StatusCode.INTERNAL,
                               f"Output {name} of instance {i} is {_describe(item)} but that of instance 0 is "
                               f"{_describe(first)}: the instances' outputs are stacked along dim 0 and must agree "
                               f"in data type and shape")
        entry = reply.outputs.add(name=name, datatype=_dtypes.OIP_NAME_OF[first.dtype])
        entry.shape.append(len(items))
        if text:
            reply.raw_output_contents.append(_join_text([bytes(item.data) for item in items]))
        else:
            entry.shape.extend(first.shape)
            reply.raw_output_contents.append(b"".join(item.data for item in items))


def _describe(item: RawTensor) -> str:
    if item.dtype in _TEXT_TYPES:
        return "BYTES"
    return f"{_dtypes.OIP_NAME_OF[item.dtype]} of shape {list(item.shape)}"
