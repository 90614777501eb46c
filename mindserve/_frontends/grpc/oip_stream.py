"""``inference.GRPCInferenceService/ModelStreamInfer``: a stream of ModelInferRequests answered by a stream of
ModelStreamInferResponses {error_message = 1, infer_response = 2}, as ``tritonclient.grpc``'s ``start_stream`` /
``async_stream_infer`` use it.

- Each request runs as ModelInfer runs it (the one OIP ``infer``, the same dispatcher and batching, so a
  stream's requests batch with every other request), many at once; responses go back in request order, each
  with its request's ``id``.
- A request that fails is answered in-band (``error_message``, and ``infer_response`` naming the model and the
  id) and the stream goes on; with the metadata ``triton_grpc_error: true`` (Triton's option) the first error
  ends the stream with its gRPC status instead, after the responses before it.
- At most ``MAX_IN_FLIGHT`` requests of one stream run at once: the next one is read only when a slot frees, so
  a client that sends faster than it reads is held back by gRPC's flow control, never buffered without bound.
- After the client half-closes, the outstanding responses still come, then the stream ends OK.
- Each request is admitted on its own: once the server drains, the stream answers what it had accepted and
  ends UNAVAILABLE, which clients retry on another replica.
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Awaitable, Callable, Optional

import grpc

from mindserve._errors import ServingError
from mindserve._frontends.admission import SHUTTING_DOWN, Admission
from mindserve._frontends.grpc.ordered import OrderedAnswers, StopReading, read_into
from mindserve._frontends.grpc.status import status_of
from mindserve._frontends.grpc.strict_parse import InvalidMessage
from mindserve._frontends.grpc.wire_write import field, text_field
from mindserve._metrics import requests as request_metrics
from mindserve._metrics.requests import RequestMetrics

log = logging.getLogger("mindserve")

MAX_IN_FLIGHT = 64  # requests of one stream running at once
ERROR_MODE_KEY = "triton_grpc_error"  # metadata: "true" ends the stream at its first error, with its status


class StreamError(Exception):
    """A request of the stream failed: its in-band answer, and the status that ends the stream in error mode."""

    def __init__(self, status: grpc.StatusCode, message: str, model_name: str, request_id: str):
        super().__init__(message)
        self.status = status
        self.message = message
        self.model_name = model_name
        self.request_id = request_id

    def in_band(self) -> bytes:
        """The ModelStreamInferResponse that carries it: error_message = 1, infer_response = 2 {model_name = 1,
        id = 3}."""
        head = text_field(0x0A, self.model_name) + text_field(0x1A, self.request_id)
        return text_field(0x0A, self.message) + field(0x12, head)


# (model_name, request_id) of a request's bytes, for its error's answer, and its ModelInferResponse bytes
Identify = Callable[[bytes], tuple[str, str]]
Infer = Callable[[bytes], Awaitable[bytes]]


class StreamInfer:
    """The ModelStreamInfer behavior over one ModelInfer implementation."""

    def __init__(self, infer: Infer, identify: Identify, admission: Admission, metrics: RequestMetrics,
                 max_in_flight: int = MAX_IN_FLIGHT):
        self._infer = infer
        self._identify = identify
        self._admission = admission
        self._metrics = metrics
        self._max_in_flight = max_in_flight

    async def serve(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """The behavior of one stream (an async generator, as gRPC's stream handlers and the access check take
        it)."""
        error_mode = any(key == ERROR_MODE_KEY and str(value).lower() == "true"
                         for key, value in (context.invocation_metadata() or ()))
        answers = OrderedAnswers(self._max_in_flight)
        reading = asyncio.get_running_loop().create_task(read_into(answers, requests, self._start))
        try:
            async for outcome in answers.answers():
                if isinstance(outcome, StreamError):
                    if error_mode:
                        await context.abort(outcome.status, outcome.message)
                    yield outcome.in_band()
                else:
                    yield field(0x12, outcome)
            refused = await reading
        finally:
            reading.cancel()
            await answers.close()
            await asyncio.gather(reading, return_exceptions=True)
        if refused:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    def _start(self, data: bytes) -> object:
        """A request read: its answer to come, or the end of the reading when the server drains."""
        if not self._admission.enter():
            self._metrics.refused(request_metrics.V2_STREAM, request_metrics.SHUTTING_DOWN)
            return StopReading(True)
        return self._answer(data)

    async def _answer(self, data: bytes) -> object:
        """One request's ModelInferResponse bytes, or its StreamError."""
        tally = self._metrics.begin(request_metrics.V2_STREAM)
        reply: Optional[bytes] = None
        try:
            reply = await self._infer(data)
            return reply
        except InvalidMessage as exc:
            request_metrics.note_reason(request_metrics.INVALID_INPUT)
            return StreamError(grpc.StatusCode.INVALID_ARGUMENT, str(exc), *self._identify(data))
        except ServingError as err:
            request_metrics.note_error(err)
            return StreamError(status_of(err), err.message, *self._identify(data))
        except asyncio.CancelledError as exc:
            request_metrics.note_error(exc)
            raise
        except Exception as exc:  # a defect of ours: answered plainly, the stream goes on
            log.exception("ModelStreamInfer failed")
            request_metrics.note_error(exc)
            return StreamError(grpc.StatusCode.INTERNAL, f"ModelStreamInfer failed: {exc}", *self._identify(data))
        finally:
            self._metrics.end(*tally)
            self._admission.leave(len(data) + (len(reply) if reply is not None else 0))
