"""MSService.Predict: MindSpore Serving's request/reply contract, answered per instance.

Reply rules (``PredictReply.error_msg``): no entry when every instance succeeded; one entry when the whole
request failed (or every instance failed with the same error); otherwise one entry per instance, code 0 for
those that succeeded, and the instances list holds an (empty, for failures) instance for each.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Optional, Sequence

import grpc
from google.protobuf.message import DecodeError

from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._dispatch.limits import too_many_instances
from mindserve._dispatch.route import Route
from mindserve._dtypes import TEXT_CODES
from mindserve._errors import Internal, ServingError
from mindserve._frontends.admission import Admission
from mindserve._frontends.grpc import ms_wire
from mindserve._frontends.grpc.gate import gated
from mindserve._frontends.grpc.ms_reply import ReplyEncoder
from mindserve._frontends.grpc.ms_shared import large_reads, output_buffers, shared_tensor, write_buffers
from mindserve._frontends.grpc.ms_tensors import tensor_from_proto
from mindserve._frontends.grpc.status import failure_status
from mindserve._frontends.grpc.strict_parse import InvalidMessage, parse_strict
from mindserve._frontends.mindspore import predict as ms_predict
from mindserve._frontends.off_loop import OffLoop
from mindserve._frontends.shared_memory.regions import ClientRegions, Lease
from mindserve._metrics import requests as request_metrics
from mindserve._proto import ms_service_pb2 as pb
from mindserve._tensor import RawTensor, StackedInputs

log = logging.getLogger("mindserve")

SERVICE_NAME = "mindspore.serving.proto.MSService"
# requests at least this large (bytes, or instances) are parsed and checked on a thread, off the event loop
OFF_LOOP_BYTES = 1 << 20
OFF_LOOP_INSTANCES = 256
_KNOWN_SIZES_LIMIT = 1024


class MSServiceHandler:
    """The Predict handler; takes and returns serialized messages so that parsing errors are its own."""

    def __init__(
        self, dispatcher: Dispatcher, off_loop: OffLoop, admission: Admission, regions: Optional[ClientRegions] = None
    ):
        self._dispatcher = dispatcher
        self._regions = regions  # None: this server takes no client shared memory
        self._off_loop = off_loop
        self._admission = admission
        self._encoder = ReplyEncoder()
        self._sizes: dict[tuple, int] = {}  # (dtype, dims) of numeric tensors seen valid -> their byte size
        self._reader = ms_wire.CommonReader()

    def rpc_handlers(self) -> grpc.GenericRpcHandler:
        predict = gated(self._admission, self.predict, self._dispatcher.requests, request_metrics.MS)
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME, {"Predict": grpc.unary_unary_rpc_method_handler(predict)}
        )

    async def predict(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        counted = ms_wire.count_instances(data)
        if counted is not None and counted[0] > self._dispatcher.max_request_instances:
            return self._too_many(*counted)
        common = self._common_request(data)
        if common is not None:
            head, route, instances = common
            return await self._answer(head.spec, self._dispatcher.run(route, instances))
        # a large request is parsed and checked on a thread: the event loop keeps answering everyone else
        large = len(data) >= OFF_LOOP_BYTES or (counted is not None and counted[0] >= OFF_LOOP_INSTANCES)
        try:
            request = (
                await self._off_loop.run(parse_strict, pb.PredictRequest, data)
                if large
                else parse_strict(pb.PredictRequest, data)
            )
        except InvalidMessage as exc:
            await context.abort(*failure_status("Predict", exc))
        return await self._answer(request.servable_spec.SerializeToString(), self._predict(request, large))

    def _too_many(self, count: int, spec_bytes: bytes) -> bytes:
        """The reply to a request of more instances than the limit, made before anything of them is read."""
        try:
            spec = pb.ServableSpec.FromString(spec_bytes)
        except DecodeError:
            spec = pb.ServableSpec()
        error = too_many_instances(count, self._dispatcher.max_request_instances, spec.name, spec.method_name)
        return self._failed(spec.SerializeToString(), error)

    async def _answer(self, spec: bytes, outcomes: Awaitable[Sequence]) -> bytes:
        """The reply with the outcome of each instance, or with the error that failed the whole request."""
        try:
            return self._encoder.encode(spec, await outcomes)
        except ServingError as err:
            return self._failed(spec, err)
        except Exception as exc:  # a defect of ours: answer it plainly, never with a traceback
            log.exception("Predict failed")
            return self._failed(spec, Internal(f"Predict failed: {exc}"))

    def _failed(self, spec: bytes, error: ServingError) -> bytes:
        """The reply to a request that failed as a whole (MSService answers it in the reply, not as a status):
        where this door maps a failure, so where it is noted for the metrics."""
        request_metrics.note_failure(error)
        return self._encoder.whole_request_error(spec, error)

    def _common_request(self, data: bytes) -> Optional[tuple[ms_wire.RequestHead, Route, StackedInputs]]:
        """A common request (see ms_wire) read in place, with the servable version that runs it; None sends the
        request the protobuf way, which also answers every error."""
        head = self._reader.read_head(data)
        if head is None:
            return None
        try:
            route = self._dispatcher.resolve(head.name, head.method, head.version)
        except ServingError:
            return None
        instances = self._reader.read(data, head, route.signature.inputs)
        return None if instances is None else (head, route, instances)

    async def _predict(self, request: pb.PredictRequest, large: bool) -> Sequence:
        """One dict of outputs or one ServingError per instance."""
        lease = self._regions.lease() if self._regions is not None else None
        try:
            return await self._predict_with(request, large, lease)
        finally:
            if lease is not None:
                lease.release()

    async def _predict_with(self, request: pb.PredictRequest, large: bool, lease: Optional[Lease]) -> Sequence:
        spec = request.servable_spec
        route = ms_predict.resolve(
            self._dispatcher, spec.name, spec.method_name, spec.version_number, len(request.instances)
        )
        buffers = output_buffers(request, route.signature.outputs, lease)
        inputs_of = self._inputs_of(route.signature.inputs, spec, lease)
        if large or (lease is not None and large_reads(request)):  # (shm_data reads too run off the loop)
            checked = await self._off_loop.run(ms_predict.check_instances, request.instances, inputs_of)
        else:
            checked = ms_predict.check_instances(request.instances, inputs_of)
        if not buffers:
            return await ms_predict.run(self._dispatcher, route, checked)
        outcomes = await ms_predict.merged(self._dispatcher, route, checked)
        for i, wanted in buffers.items():
            if isinstance(outcomes[i], dict):
                outcomes[i] = write_buffers(outcomes[i], wanted)
        return outcomes

    def _inputs_of(self, names: tuple, spec: pb.ServableSpec, lease: Optional[Lease]) -> ms_predict.InputsOf:
        """How an Instance becomes its checked inputs: a tensor in shared memory read from there, one seen
        before checked the short way, any other through every check."""
        servable, method = spec.name, spec.method_name
        known, checked = self._known_tensor, self._checked_tensor

        def tensor_of(name: str, tensor: pb.Tensor) -> RawTensor:
            if tensor.WhichOneof("tensor_data") == "shm_data":
                return shared_tensor(name, tensor, lease)
            return known(tensor) or checked(name, tensor)

        def inputs_of(index: int, instance: pb.Instance) -> dict:
            return ms_predict.instance_inputs(instance.items, names, servable, method, tensor_of)

        return inputs_of

    def _known_tensor(self, tensor: pb.Tensor) -> Optional[RawTensor]:
        """The fast path for the tensors a request repeats instance after instance: a numeric (dtype, shape)
        already checked once, with exactly its byte count of data and nothing else. None sends the tensor
        through the full checks (which also give the precise error)."""
        dims = tuple(tensor.shape.dims)
        code = tensor.dtype
        expected = self._sizes.get((code, dims))
        if expected is None:
            return None
        data = tensor.data
        if len(data) != expected or tensor.bytes_val:
            return None
        return RawTensor(code, dims, data)

    def _checked_tensor(self, name: str, tensor: pb.Tensor) -> RawTensor:
        raw = tensor_from_proto(name, tensor)
        if raw.dtype not in TEXT_CODES and raw.data:  # (empty data could hide shared-memory data: not cached)
            if len(self._sizes) >= _KNOWN_SIZES_LIMIT:
                self._sizes.clear()
            self._sizes[(raw.dtype, raw.shape)] = len(raw.data)
        return raw
