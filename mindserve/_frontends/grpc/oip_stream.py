"""``inference.GRPCInferenceService/ModelStreamInfer``: a stream of ModelInferRequests answered by a stream of
ModelStreamInferResponses {error_message = 1, infer_response = 2}, as ``tritonclient.grpc``'s ``start_stream`` /
``async_stream_infer`` use it.

- Each request runs as ModelInfer runs it (the one OIP ``infer``, the same dispatcher and batching, so a
  stream's requests batch with every other request), many at once; responses go back in request order, each
  with its request's ``id``.
- A request that fails is answered in-band (``error_message``, and ``infer_response`` naming the model and the
  id) and the stream goes on; with the metadata ``triton_grpc_error: true`` (Triton's option) the first error
  ends the stream with its gRPC status instead, after the responses before it.
- At most ``MAX_IN_FLIGHT`` requests of one stream run at once, and the answers a stream holds (made, not yet
  handed to gRPC) count against the server's stream memory (``stream_memory``): the next request is read only
  when a slot frees and its answer would fit (estimated as the largest answer of the stream, or lately of the
  server, at first the stream's whole share), so a client that sends faster than it reads is held back by
  gRPC's flow control, never buffered without bound.
- After the client half-closes, the outstanding responses still come, then the stream ends OK.
- Each request is admitted on its own: once the server drains, the stream stops reading, answers what it had
  accepted and ends UNAVAILABLE, which clients retry on another replica.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import AsyncIterator, Awaitable, Callable, Optional, Union

import grpc

from mindserve._frontends.admission import SHUTTING_DOWN, Admission
from mindserve._frontends.grpc.ordered import OrderedAnswers, StopReading, read_into
from mindserve._frontends.grpc.status import failure_status
from mindserve._frontends.grpc.wire_write import field, text_field
from mindserve._frontends.stream_memory import StreamMemory, StreamShare, Ticket, server_memory
from mindserve._metrics import requests as request_metrics
from mindserve._metrics.requests import RequestMetrics

MAX_IN_FLIGHT = 64  # requests of one stream running at once
RECENT_ANSWERS = 64  # a new stream's first estimate: the largest of the server's last answers
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


class _Sizes:
    """The largest request or answer of one stream so far: what its next request is estimated to hold."""

    __slots__ = ("largest",)

    def __init__(self) -> None:
        self.largest = 0


class StreamInfer:
    """The ModelStreamInfer behavior over one ModelInfer implementation."""

    def __init__(
        self,
        infer: Infer,
        identify: Identify,
        admission: Admission,
        metrics: RequestMetrics,
        max_in_flight: int = MAX_IN_FLIGHT,
        memory: Optional[StreamMemory] = None,
    ):
        self._infer = infer
        self._identify = identify
        self._admission = admission
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._memory = memory  # None: the master's (stream_memory.server_memory())
        self._recent: deque[int] = deque(maxlen=RECENT_ANSWERS)  # the sizes of the server's last answers

    async def serve(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """The behavior of one stream (an async generator, as gRPC's stream handlers and the access check take
        it)."""
        error_mode = any(
            key == ERROR_MODE_KEY and str(value).lower() == "true"
            for key, value in (context.invocation_metadata() or ())
        )
        share = (self._memory or server_memory()).share()
        sizes = _Sizes()
        answers = OrderedAnswers(self._max_in_flight)

        async def start(data: bytes, ticket: Ticket) -> object:
            await ticket.grow_to(max(self._estimate(sizes, share), len(data)))  # what its answer will hold
            return self._start(data, ticket, sizes)

        reading = asyncio.get_running_loop().create_task(read_into(answers, requests, start, share, drained=True))
        try:
            async for ticket, outcome in answers.answers():
                if isinstance(outcome, StreamError):
                    if error_mode:
                        await context.abort(outcome.status, outcome.message)
                    yield outcome.in_band()
                else:
                    yield field(0x12, outcome)
                ticket.release()  # handed to gRPC, which has sent it
            refused = await reading
        finally:
            reading.cancel()
            await answers.close()
            await asyncio.gather(reading, return_exceptions=True)
            released = share.close()
            if self._admission.trimmer is not None:  # answers a client never read: their memory goes back too
                self._admission.trimmer.note(released)
        if refused:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    def _estimate(self, sizes: _Sizes, share: StreamShare) -> int:
        """What the next request of a stream is expected to hold: the stream's largest request or answer, for its
        first one the largest of the server's recent answers, and the stream's whole share when nothing is known
        (its first request then runs alone: a stream of large answers cannot read many requests before the
        first answer tells their size)."""
        known = sizes.largest or max(self._recent, default=0)
        return known or share.memory.per_stream

    def _start(self, data: bytes, ticket: Ticket, sizes: _Sizes) -> object:
        """A request read: its answer to come, or the end of the reading when the server drains."""
        if not self._admission.enter():
            self._metrics.refused(request_metrics.V2_STREAM, request_metrics.SHUTTING_DOWN)
            return StopReading(True)
        return self._answer(data, ticket, sizes)

    async def _answer(self, data: bytes, ticket: Ticket, sizes: _Sizes) -> tuple[Ticket, object]:
        """One request's ModelInferResponse bytes, or its StreamError, with the ticket that counts it."""
        outcome = await self._outcome(data)
        size = len(outcome) if isinstance(outcome, bytes) else len(outcome.message)
        ticket.resize(size)
        sizes.largest = max(sizes.largest, size, len(data))
        self._recent.append(max(size, len(data)))
        return ticket, outcome

    async def _outcome(self, data: bytes) -> Union[bytes, StreamError]:
        """One request's ModelInferResponse bytes, or its StreamError."""
        reply: Optional[bytes] = None
        try:
            with self._metrics.tallied(request_metrics.V2_STREAM):  # (a cancelled one counted as such)
                try:
                    reply = await self._infer(data)
                    return reply
                except Exception as exc:  # answered on the stream, which goes on
                    status, message = failure_status("ModelStreamInfer", exc)
                    return StreamError(status, message, *self._identify(data))
        finally:
            self._admission.leave(len(data) + (len(reply) if reply is not None else 0))
