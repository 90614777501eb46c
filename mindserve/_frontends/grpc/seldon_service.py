"""``io.seldon.api.rpc.Classifier/Predict`` on the gRPC port: Seldon's own clients (with a token in the metadata
``oauth_token``, see access control) are answered by the servable that declares ``seldon_classifier``. Errors
are gRPC statuses with texts, as for the other services (``unary``)."""

from __future__ import annotations

import grpc

from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._frontends.admission import Admission
from mindserve._frontends.grpc.gate import gated
from mindserve._frontends.grpc.unary import parsed, unary
from mindserve._frontends.seldon.classify import classify
from mindserve._metrics import requests as request_metrics
from mindserve._proto import seldon as pb

SERVICE_NAME = pb.SERVICE_NAME


class SeldonServiceHandler:
    def __init__(self, dispatcher: Dispatcher, admission: Admission):
        self._dispatcher = dispatcher
        self._admission = admission

    def rpc_handlers(self) -> grpc.GenericRpcHandler:
        async def predict(request):
            return await classify(self._dispatcher, request)

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Predict": grpc.unary_unary_rpc_method_handler(
                    gated(
                        self._admission,
                        unary("Predict", parsed(pb.ClassificationRequest, predict)),
                        self._dispatcher.requests,
                        request_metrics.SELDON,
                    )
                )
            },
        )
