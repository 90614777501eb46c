"""``inference.GRPCInferenceService``: the Open Inference Protocol (KServe v2, Triton's gRPC protocol) on the same
gRPC server as MSService, so that standard clients such as ``tritonclient.grpc`` work unchanged.

What a model is, how inputs become instances and outputs stack, and the error texts are the protocol's own and
shared with the REST routes (``mindserve._frontends.oip``); this module is the gRPC transport of them:

- data comes in ``raw_input_contents`` (one entry per input, little-endian, row-major; a BYTES element is a 4-byte
  little-endian length and its bytes) or in the typed ``contents``; replies use ``raw_output_contents``.
- a BYTES tensor is taken as text with the parameter ``content_type: "str"`` (MLServer's convention).

Errors: a gRPC status and a text, never UNKNOWN. NOT_FOUND for an unknown model or version, INVALID_ARGUMENT for a
malformed request or bad inputs (MSService's texts), UNAVAILABLE when no worker is alive, RESOURCE_EXHAUSTED for
a full queue, INTERNAL for failures inside the servable or the server. The protocol has no per-instance error:
the first failed instance fails the whole call.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Awaitable, Callable, Optional

import grpc
import numpy as np

import mindserve
from mindserve import _dtypes
from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._errors import InvalidInput, NotServed, clip
from mindserve._frontends.admission import Admission
from mindserve._frontends.grpc.gate import gated
from mindserve._frontends.grpc.oip_stream import StreamInfer
from mindserve._frontends.grpc.oip_wire import InferCall, InferReader, encode_response
from mindserve._frontends.grpc.strict_parse import parse_strict
from mindserve._frontends.grpc.unary import parsed as _parsed
from mindserve._frontends.grpc.unary import unary as _unary
from mindserve._frontends.oip import models, statistics
from mindserve._frontends.oip.infer import infer, timeout_seconds
from mindserve._frontends.oip.models import SERVER_NAME
from mindserve._frontends.oip.tensors import InputTensor, RawInput
from mindserve._frontends.shared_memory.regions import ClientRegions, Lease
from mindserve._frontends.shared_memory.tensors import CUDA_UNSUPPORTED, enabled, parameter_values, shared_input
from mindserve._frontends.tensor_checks import invalid_input
from mindserve._metrics import requests as request_metrics
from mindserve._proto import grpc_inference as oip

log = logging.getLogger("mindserve")

SERVICE_NAME = oip.SERVICE_NAME
# Protocol extensions this server implements: model statistics, and ModelStreamInfer. binary_tensor_data is an
# HTTP/REST extension (raw tensor bytes in the HTTP body); over gRPC raw contents are part of the core protocol,
# so it is not claimed here.
EXTENSIONS: tuple[str, ...] = ("statistics", "model_stream_infer")
SHM_EXTENSION = "system_shared_memory"  # on a server started with allow_client_shm

# the InferTensorContents field of each data type: the protocol widens the small integer types to 32 bits and
# has no field for FP16 (FP16 data only comes raw)
_CONTENTS_FIELD = {
    _dtypes.MS_BOOL: "bool_contents",
    _dtypes.MS_INT8: "int_contents",
    _dtypes.MS_INT16: "int_contents",
    _dtypes.MS_INT32: "int_contents",
    _dtypes.MS_INT64: "int64_contents",
    _dtypes.MS_UINT8: "uint_contents",
    _dtypes.MS_UINT16: "uint_contents",
    _dtypes.MS_UINT32: "uint_contents",
    _dtypes.MS_UINT64: "uint64_contents",
    _dtypes.MS_FLOAT32: "fp32_contents",
    _dtypes.MS_FLOAT64: "fp64_contents",
    _dtypes.MS_BYTES: "bytes_contents",
}
_ALL_CONTENTS_FIELDS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)
# the numpy type each contents field holds, before narrowing to the tensor's type
_FIELD_DTYPE = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype("<i4"),
    "int64_contents": np.dtype("<i8"),
    "uint_contents": np.dtype("<u4"),
    "uint64_contents": np.dtype("<u8"),
    "fp32_contents": np.dtype("<f4"),
    "fp64_contents": np.dtype("<f8"),
}


def _identify(data: bytes) -> tuple[str, str]:
    """The model name and id of a ModelInferRequest's bytes, as far as they can be read (for its error's
    answer)."""
    request: Any = oip.ModelInferRequest()
    try:
        request.ParseFromString(data)
    except Exception:  # not a message at all: the answer names nothing
        return "", ""
    return request.model_name, request.id


def _set_duration(message: Any, duration: statistics.Duration) -> None:
    message.count, message.ns = duration.count, duration.ns


def _as_str(tensor: Any) -> bool:
    return "content_type" in tensor.parameters and tensor.parameters["content_type"].string_param == "str"


class _ContentsInput(InputTensor):
    """A tensor whose data came in the typed ``contents`` of its message."""

    def __init__(self, tensor: Any):
        super().__init__(tensor.name, tensor.datatype, tuple(tensor.shape), _as_str(tensor))
        self._contents = tensor.contents

    def numeric_data(self, code: int) -> bytes:
        return self._typed(code)

    def bytes_items(self, count: int) -> list:
        return self._typed(_dtypes.MS_BYTES)

    def _typed(self, code: int) -> Any:
        """The elements of ``contents`` for a tensor of type ``code``: little-endian bytes for numbers, a list of
        bytes for BYTES. The element count is checked against the shape before any conversion."""
        name, datatype, dims, contents = self.name, self.datatype, self.shape, self._contents
        field = _CONTENTS_FIELD.get(code)
        if field is None:
            raise invalid_input(
                name, f"Tensor check failed: {datatype} input data can only be given in raw_input_contents"
            )
        for other in _ALL_CONTENTS_FIELDS:
            if other != field and len(getattr(contents, other)):
                raise invalid_input(
                    name,
                    f"Tensor check failed: {datatype} input data belongs in contents.{field}, not contents.{other}",
                )
        values = getattr(contents, field)
        count = math.prod(dims)
        if len(values) != count:
            raise invalid_input(
                name,
                f"Tensor check failed: input contents count {len(values)} invalid, shape "
                f"{list(dims)} needs {count} elements",
            )
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


class OipServiceHandler:
    """The GRPCInferenceService handlers; they take and return serialized messages so that parsing errors are
    this frontend's own (INVALID_ARGUMENT with a text, never UNKNOWN)."""

    def __init__(self, dispatcher: Dispatcher, admission: Admission, regions: Optional[ClientRegions] = None):
        self._dispatcher = dispatcher
        self._admission = admission
        self._regions = regions  # None: this server takes no client shared memory
        self._reader = InferReader()

    def rpc_handlers(self) -> grpc.GenericRpcHandler:
        """The generic handler of every RPC this server answers (the others are UNIMPLEMENTED)."""
        rpcs: dict[str, Callable[[bytes], Awaitable[bytes]]] = {
            "ServerLive": _parsed(oip.ServerLiveRequest, self._server_live),
            "ServerReady": _parsed(oip.ServerReadyRequest, self._server_ready),
            "ServerMetadata": _parsed(oip.ServerMetadataRequest, self._server_metadata),
            "ModelReady": _parsed(oip.ModelReadyRequest, self._model_ready),
            "ModelMetadata": _parsed(oip.ModelMetadataRequest, self._model_metadata),
            "ModelInfer": self._model_infer,
            "ModelStatistics": _parsed(oip.ModelStatisticsRequest, self._model_statistics),
            "SystemSharedMemoryStatus": _parsed(oip.SystemSharedMemoryStatusRequest, self._shm_status),
            "SystemSharedMemoryRegister": _parsed(oip.SystemSharedMemoryRegisterRequest, self._shm_register),
            "SystemSharedMemoryUnregister": _parsed(oip.SystemSharedMemoryUnregisterRequest, self._shm_unregister),
            "CudaSharedMemoryStatus": _parsed(oip.CudaSharedMemoryStatusRequest, self._cuda_status),
            "CudaSharedMemoryRegister": _parsed(oip.CudaSharedMemoryRegisterRequest, self._cuda_register),
            "CudaSharedMemoryUnregister": _parsed(oip.CudaSharedMemoryUnregisterRequest, self._cuda_unregister),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                gated(
                    self._admission,
                    _unary(name, impl),
                    self._dispatcher.requests if name == "ModelInfer" else None,
                    request_metrics.V2,
                )
            )
            for name, impl in rpcs.items()
        }
        stream = StreamInfer(self._model_infer, _identify, self._admission, self._dispatcher.requests)
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(stream.serve)
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    # ---- server and model state ------------------------------------------------------------------------------

    async def _server_live(self, request: Any) -> Any:
        return oip.ServerLiveResponse(live=True)

    async def _server_ready(self, request: Any) -> Any:
        return oip.ServerReadyResponse(ready=self._dispatcher.ready())

    async def _server_metadata(self, request: Any) -> Any:
        extensions = EXTENSIONS + (SHM_EXTENSION,) if self._regions is not None else EXTENSIONS
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=mindserve.__version__, extensions=extensions)

    async def _model_ready(self, request: Any) -> Any:
        """Not ready for a model or version that is not served, so that clients can poll for it."""
        return oip.ModelReadyResponse(ready=bool(models.model_ready(self._dispatcher, request.name, request.version)))

    async def _model_metadata(self, request: Any) -> Any:
        metadata = models.model_metadata(self._dispatcher, request.name, request.version)
        reply = oip.ModelMetadataResponse(name=metadata.name, platform=metadata.platform, versions=metadata.versions)
        for tensors_, entries in ((metadata.inputs, reply.inputs), (metadata.outputs, reply.outputs)):
            for tensor in tensors_:
                entries.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        return reply

    async def _model_statistics(self, request: Any) -> Any:
        reply = oip.ModelStatisticsResponse()
        for found in await statistics.model_statistics(self._dispatcher, request.name, request.version):
            entry = reply.model_stats.add(
                name=found.name,
                version=found.version,
                last_inference=found.last_inference,
                inference_count=found.inference_count,
                execution_count=found.execution_count,
            )
            for key in (
                "success",
                "fail",
                "queue",
                "compute_input",
                "compute_infer",
                "compute_output",
                "cache_hit",
                "cache_miss",
            ):
                _set_duration(getattr(entry.inference_stats, key), getattr(found, key, statistics.Duration()))
            for batch in found.batch_stats:
                added = entry.batch_stats.add(batch_size=batch.batch_size)
                for key in ("compute_input", "compute_infer", "compute_output"):
                    _set_duration(getattr(added, key), getattr(batch, key))
        return reply

    # ---- shared memory -------------------------------------------------------------------------------------

    async def _shm_status(self, request: Any) -> Any:
        reply = oip.SystemSharedMemoryStatusResponse()
        for region in enabled(self._regions).status(request.name):
            entry = reply.regions[region.name]
            entry.name, entry.key, entry.offset, entry.byte_size = region
        return reply

    async def _shm_register(self, request: Any) -> Any:
        enabled(self._regions).register(request.name, request.key, request.offset, request.byte_size)
        return oip.SystemSharedMemoryRegisterResponse()

    async def _shm_unregister(self, request: Any) -> Any:
        enabled(self._regions).unregister(request.name)
        return oip.SystemSharedMemoryUnregisterResponse()

    async def _cuda_status(self, request: Any) -> Any:
        if request.name:
            raise NotServed(f"Unable to find cuda shared memory region: '{clip(request.name)}'")
        return oip.CudaSharedMemoryStatusResponse()

    async def _cuda_register(self, request: Any) -> Any:
        raise InvalidInput(CUDA_UNSUPPORTED)

    async def _cuda_unregister(self, request: Any) -> Any:
        return oip.CudaSharedMemoryUnregisterResponse()

    # ---- inference -------------------------------------------------------------------------------------------

    async def _model_infer(self, data: bytes) -> bytes:
        """A common request is read in place (``oip_wire``), any other through protobuf; both run the one OIP
        ``infer`` and answer through the one reply writer."""
        call = self._reader.read(data)
        lease = self._regions.lease() if self._regions is not None else None
        try:
            if call is None:
                request: Any = parse_strict(oip.ModelInferRequest, data)
                call = InferCall(
                    request.model_name,
                    request.model_version,
                    request.id,
                    lambda: self._inputs(request, lease),
                    [(o.name, parameter_values(o.parameters)) for o in request.outputs],
                )
                timeout = timeout_seconds(parameter_values(request.parameters)) if request.parameters else None
            else:
                timeout = None  # (a common request has no parameters)
            done = await infer(
                self._dispatcher, call.model_name, call.model_version, call.inputs, call.outputs, lease, timeout
            )
            return encode_response(call.model_name, str(done.served_version), call.id, done.outputs)
        finally:
            if lease is not None:
                lease.release()

    @staticmethod
    def _inputs(request: Any, lease: Optional[Lease]) -> list[InputTensor]:
        """The request's input tensors: in shared memory where their parameters say so; the others' data raw or
        typed (one way for all of them)."""
        tensors_ = request.inputs
        raw = request.raw_input_contents
        shared: dict[int, InputTensor] = {}
        for k, tensor in enumerate(tensors_):
            found = (
                shared_input(
                    lease, tensor.name, tensor.datatype, tuple(tensor.shape), parameter_values(tensor.parameters)
                )
                if tensor.parameters
                else None
            )
            if found is not None:
                if tensor.HasField("contents"):
                    raise InvalidInput(f"Input {clip(tensor.name)} has both shared memory and contents: give one")
                shared[k] = found
            elif raw and tensor.HasField("contents"):
                raise InvalidInput(
                    f"Input {clip(tensor.name)} has contents while the request uses "
                    f"raw_input_contents: give all inputs one way"
                )
        inline = [t for k, t in enumerate(tensors_) if k not in shared]
        if raw and len(raw) != len(inline):
            others = " not in shared memory" if shared else ""
            raise InvalidInput(
                f"raw_input_contents holds {len(raw)} entries for {len(inline)} inputs{others}: it "
                f"needs one per{' such' if shared else ''} input, in the order of inputs"
            )
        given = iter(raw) if raw else None
        made: list[InputTensor] = []
        for k, tensor in enumerate(tensors_):
            if k in shared:
                made.append(shared[k])
            elif given is not None:
                made.append(RawInput(tensor.name, tensor.datatype, tuple(tensor.shape), next(given), _as_str(tensor)))
            else:
                made.append(_ContentsInput(tensor))
        return made
