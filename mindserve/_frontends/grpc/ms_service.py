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
from mindserve._errors import Internal, InvalidInput, ServingError, clip, unexpected_input
from mindserve._frontends.admission import Admission
from mindserve._frontends.grpc import ms_wire
from mindserve._frontends.grpc.gate import gated
from mindserve._frontends.grpc.ms_reply import ReplyEncoder
from mindserve._frontends.grpc.ms_shared import large_reads, output_buffers, shared_tensor, write_buffers
from mindserve._frontends.grpc.ms_tensors import tensor_from_proto
from mindserve._frontends.grpc.strict_parse import InvalidMessage, parse_strict
from mindserve._frontends.off_loop import OffLoop
from mindserve._frontends.shared_memory.regions import ClientRegions, Lease
from mindserve._metrics import requests as request_metrics
from mindserve._proto import ms_service_pb2 as pb
from mindserve._tensor import RawTensor, StackedInputs
from mindserve._transport.blocks import TEXT_CODES

log = logging.getLogger("mindserve")

SERVICE_NAME = "mindspore.serving.proto.MSService"
# requests at least this large (bytes, or instances) are parsed and checked on a thread, off the event loop
OFF_LOOP_BYTES = 1 << 20
OFF_LOOP_INSTANCES = 256
_KNOWN_SIZES_LIMIT = 1024


class MSServiceHandler:
    """The Predict handler; takes and returns serialized messages so that parsing errors are its own."""

    def __init__(self, dispatcher: Dispatcher, off_loop: OffLoop, admission: Admission,
                 regions: Optional[ClientRegions] = None):
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
            SERVICE_NAME, {"Predict": grpc.unary_unary_rpc_method_handler(predict)})

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
            request = await self._off_loop.run(parse_strict, pb.PredictRequest, data) if large \
                else parse_strict(pb.PredictRequest, data)
        except InvalidMessage as exc:
            request_metrics.note_reason(request_metrics.INVALID_INPUT)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return await self._answer(request.servable_spec.SerializeToString(), self._predict(request, large))

    def _too_many(self, count: int, spec_bytes: bytes) -> bytes:
        """The reply to a request of more instances than the limit, made before anything of them is read."""
        try:
            spec = pb.ServableSpec.FromString(spec_bytes)
        except DecodeError:
            spec = pb.ServableSpec()
        error = too_many_instances(count, self._dispatcher.max_request_instances, spec.name, spec.method_name)
        request_metrics.note_error(error)
        return self._encoder.whole_request_error(spec.SerializeToString(), error)

    async def _answer(self, spec: bytes, outcomes: Awaitable[Sequence]) -> bytes:
        """The reply with the outcome of each instance, or with the error that failed the whole request."""
        try:
            return self._encoder.encode(spec, await outcomes)
        except ServingError as err:
            request_metrics.note_error(err)
            return self._encoder.whole_request_error(spec, err)
        except Exception as exc:  # a defect of ours: answer it plainly, never with a traceback
            log.exception("Predict failed")
            request_metrics.note_error(exc)
            return self._encoder.whole_request_error(spec, Internal(f"Predict failed: {exc}"))

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
        route = self._dispatcher.resolve(spec.name, spec.method_name, spec.version_number)
        if not request.instances:
            raise InvalidInput(f"Instances count of request cannot be 0, servable: {clip(spec.name)}, "
                               f"method: {clip(spec.method_name)}")
        self._dispatcher.check_instance_count(len(request.instances), spec.name, spec.method_name)
        names = route.signature.inputs
        buffers = output_buffers(request, route.signature.outputs, lease)
        if large or (lease is not None and large_reads(request)):  # (shm_data reads too run off the loop)
            outcomes, valid_index, valid = await self._off_loop.run(self._checked_instances, request, names, lease)
        else:
            outcomes, valid_index, valid = self._checked_instances(request, names, lease)
        if len(valid) == len(outcomes) and not buffers:  # every instance valid: the results as they come (possibly
            return await self._dispatcher.run(route, valid)  # stacked)
        if valid:
            for i, result in zip(valid_index, await self._dispatcher.run(route, valid)):
                outcomes[i] = result
        for i, wanted in buffers.items():
            if isinstance(outcomes[i], dict):
                outcomes[i] = write_buffers(outcomes[i], wanted)
        request_metrics.note_results(outcomes)  # the bad instances' errors, when no instance ran
        return outcomes

    def _checked_instances(self, request: pb.PredictRequest, names: tuple, lease: Optional[Lease] = None) \
            -> tuple[list, list[int], list[dict]]:
        """Each instance's inputs checked: the outcomes so far (a ServingError for each bad instance, None for the
        others), and the index and inputs of each valid instance."""
        spec = request.servable_spec
        outcomes: list = [None] * len(request.instances)
        valid_index, valid = [], []
        for i, instance in enumerate(request.instances):
            try:
                valid.append(self._instance_inputs(instance, names, spec, lease))
                valid_index.append(i)
            except ServingError as err:
                outcomes[i] = err
        return outcomes, valid_index, valid

    def _instance_inputs(self, instance: pb.Instance, input_names: tuple, spec: pb.ServableSpec,
                         lease: Optional[Lease] = None) -> dict:
        items = instance.items
        inputs = {}
        for name in input_names:
            tensor = items.get(name)
            if tensor is None:
                raise InvalidInput(f"Cannot find input {name} in instance input , servable "
                                   f"{spec.name}, method {spec.method_name}")
            if tensor.WhichOneof("tensor_data") == "shm_data":
                inputs[name] = shared_tensor(name, tensor, lease)
                continue
            inputs[name] = self._known_tensor(tensor) or self._checked_tensor(name, tensor)
        if len(items) != len(input_names):
            extra = next(key for key in items if key not in inputs)
            raise unexpected_input(extra, spec.name, spec.method_name, input_names)
        return inputs

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
