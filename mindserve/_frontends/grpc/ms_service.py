"""MSService.Predict: MindSpore Serving's request/reply contract, answered per instance.

Reply rules (``PredictReply.error_msg``): no entry when every instance succeeded; one entry when the whole
request failed (or every instance failed with the same error); otherwise one entry per instance, code 0 for
those that succeeded, and the instances list holds an (empty, for failures) instance for each.
"""
from __future__ import annotations

import logging

import grpc

from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._errors import INVALID_INPUTS, SYSTEM_ERROR, ServingError
from mindserve._frontends.grpc.ms_tensors import tensor_from_proto, tensor_to_proto
from mindserve._frontends.grpc.strict_parse import InvalidMessage, parse_strict
from mindserve._proto import ms_service_pb2 as pb

log = logging.getLogger("mindserve")

SERVICE_NAME = "mindspore.serving.proto.MSService"


def _whole_request_error(reply: pb.PredictReply, error: ServingError) -> bytes:
    del reply.instances[:]
    reply.error_msg.add(error_code=error.code, error_msg=error.message.encode())
    return reply.SerializeToString()


class MSServiceHandler:
    """The Predict handler; takes and returns serialized messages so that parsing errors are its own."""

    def __init__(self, dispatcher: Dispatcher):
        self._dispatcher = dispatcher

    def rpc_handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME, {"Predict": grpc.unary_unary_rpc_method_handler(self.predict)})

    async def predict(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            request = parse_strict(pb.PredictRequest, data)
        except InvalidMessage as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        reply = pb.PredictReply()
        reply.servable_spec.CopyFrom(request.servable_spec)
        try:
            return await self._predict(request, reply)
        except ServingError as err:
            return _whole_request_error(reply, err)
        except Exception as exc:  # a defect of ours: answer it plainly, never with a traceback
            log.exception("Predict failed")
            return _whole_request_error(reply, ServingError(SYSTEM_ERROR, f"Predict failed: {exc}"))

    async def _predict(self, request: pb.PredictRequest, reply: pb.PredictReply) -> bytes:
        spec = request.servable_spec
        group, signature = self._dispatcher.resolve(spec.name, spec.method_name, spec.version_number)
        if not request.instances:
            raise ServingError(INVALID_INPUTS, f"Instances count of request cannot be 0, servable: {spec.name}, "
                                               f"method: {spec.method_name}")
        outcomes: list = [None] * len(request.instances)
        valid_index, valid = [], []
        for i, instance in enumerate(request.instances):
            try:
                valid.append(self._instance_inputs(instance, signature["inputs"], spec))
                valid_index.append(i)
            except ServingError as err:
                outcomes[i] = err
        if valid:
            for i, result in zip(valid_index, await self._dispatcher.run(group, spec.method_name, valid)):
                outcomes[i] = result
        return self._encode(reply, outcomes)

    @staticmethod
    def _instance_inputs(instance: pb.Instance, input_names: list, spec: pb.ServableSpec) -> dict:
        items = instance.items
        inputs = {}
        for name in input_names:
            if name not in items:
                raise ServingError(INVALID_INPUTS, f"Cannot find input {name} in instance input , servable "
                                                   f"{spec.name}, method {spec.method_name}")
            inputs[name] = tensor_from_proto(name, items[name])
        return inputs

    @staticmethod
    def _encode(reply: pb.PredictReply, outcomes: list) -> bytes:
        errors = [o for o in outcomes if isinstance(o, ServingError)]
        if errors and len(errors) == len(outcomes) and len({(e.code, e.message) for e in errors}) == 1:
            return _whole_request_error(reply, errors[0])
        for outcome in outcomes:
            instance = reply.instances.add()
            if errors:
                entry = reply.error_msg.add()
                if isinstance(outcome, ServingError):
                    entry.error_code = outcome.code
                    entry.error_msg = outcome.message.encode()
                    continue
            for name, raw in outcome.items():
                tensor_to_proto(raw, instance.items[name])
        return reply.SerializeToString()
