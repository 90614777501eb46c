"""``MediaGraphExtension/ProcessMediaStream``: the video-analytics gRPC extension (Azure Video Analyzer / Live
Video Analytics) on the gRPC port. A client streams video frames; each runs through a servable method (its one
input receives the frame as an HxWx3 uint8 RGB array) by way of the same dispatcher and batching as every other
request, so frames of many streams batch together in the worker.

The conversation (see the contract in ``mindserve/_proto/media_graph.proto``):

1. The client's first message is its MediaStreamDescriptor (sequence_number 1): the frame format, the transfer
   (embedded bytes, or a shared memory region in /dev/shm) and, in ``extension_configuration``, JSON naming what
   runs: ``{"servable": ..., "method": ..., "version": 0, "batch_size": 1}`` (the server's MediaStreamConfig
   gives what it leaves out). The server answers with its own descriptor, acknowledging it.
2. Each MediaSample carries a frame. With ``batch_size`` N, frames gather N at a time: a frame that does not
   complete its batch is acknowledged as soon as its bytes are taken (a shared-memory region may then be
   reused); the frame that completes it is acknowledged with the batch's inferences once they are made, each
   marked with its frame's sequence number and timestamp (``extensions``) when N > 1. Frames left over when the
   client half-closes are run and answered in one last message that acknowledges nothing (ack 0); so are the
   frames of an incomplete batch when the server drains (the stream then ends UNAVAILABLE, every frame it
   acknowledged answered), and when memory is short (below).
3. Messages are numbered from 1 on each side; the server's replies go in the order of the frames.

Frames held (read and not yet run, their decoded size counted, and what decoding them takes) count against the
server's stream memory (``stream_memory``): a frame's memory is reserved before it is read out of the region or
decoded, and the stream reads nothing more while it waits for it. Rather than keep a stream (or another) waiting,
an incomplete batch is run early, answered with ack 0 as above; a frame that needs more than one stream may hold
ends the stream RESOURCE_EXHAUSTED.

Any fault of a stream (a sample before the descriptor, a second descriptor, a message out of sequence, a frame
that does not match its format, a bad reference into the region, a failing method) ends that stream with a
status and a text naming it; other streams and calls go on, and the stream's region is closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator, Optional

import grpc
import numpy as np

from mindserve import _dtypes
from mindserve._config import MAX_MEDIA_BATCH, MediaStreamConfig
from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._errors import FeatureDisabled, ServingError, clip
from mindserve._frontends.admission import SHUTTING_DOWN, Admission
from mindserve._frontends.grpc.ordered import OrderedAnswers, StopReading, read_into
from mindserve._frontends.grpc.status import failure_status, status_of
from mindserve._frontends.grpc.strict_parse import InvalidMessage, parse_strict
from mindserve._frontends.media_stream import frame_size
from mindserve._frontends.media_stream.frames import MAX_PIXELS, FrameError, FrameFormat, expected_length
from mindserve._frontends.media_stream.inferences import frame_inferences
from mindserve._frontends.media_stream.sample_wire import read_embedded
from mindserve._frontends.media_stream.shared_region import SharedRegion
from mindserve._frontends.off_loop import OffLoop
from mindserve._frontends.shared_memory.client_file import LARGE_READ
from mindserve._frontends.shared_memory.regions import ClientRegions
from mindserve._frontends.shared_memory.tensors import DISABLED
from mindserve._frontends.stream_memory import StreamMemory, StreamShare, Ticket, server_memory
from mindserve._metrics import requests as request_metrics
from mindserve._proto import media_graph as pb
from mindserve._tensor import RawTensor

log = logging.getLogger("mindserve")

SERVICE_NAME = pb.SERVICE_NAME
MAX_IN_FLIGHT = 16  # frames (or batches) of one stream in progress at once
CONFIG_KEYS = ("servable", "method", "version", "batch_size")


class StreamEnd(Exception):
    """The stream ends with ``status`` and ``message``."""

    def __init__(self, status: grpc.StatusCode, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _frame_end(error: FrameError) -> StreamEnd:
    return StreamEnd(getattr(grpc.StatusCode, error.status), error.message)


class _Target:
    """What a stream runs: the servable method, its version, its one input, and the batch size."""

    def __init__(self, servable: str, method: str, version: int, batch_size: int, input_name: str):
        self.servable, self.method, self.version = servable, method, version
        self.batch_size, self.input_name = batch_size, input_name


def _configuration(text: str, defaults: Optional[MediaStreamConfig]) -> dict:
    """The stream's settings: the descriptor's JSON over the server's defaults."""
    settings: dict[str, Any] = {}
    if defaults is not None:
        settings = {
            "servable": defaults.servable,
            "method": defaults.method,
            "version": defaults.version,
            "batch_size": defaults.batch_size,
        }
    if text.strip():
        try:
            given = json.loads(text)
        except ValueError as exc:
            raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT, f"extension_configuration is not JSON: {exc}") from None
        if not isinstance(given, dict):
            raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT, "extension_configuration should be a JSON object")
        unknown = sorted(set(given) - set(CONFIG_KEYS))
        if unknown:
            raise StreamEnd(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"extension_configuration has the unknown key '{clip(unknown[0])}': it takes {', '.join(CONFIG_KEYS)}",
            )
        settings.update(given)
    missing = [key for key in ("servable", "method") if key not in settings]
    if missing:
        raise StreamEnd(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the stream names no {' and no '.join(missing)}: set extension_configuration to "
            f'{{"servable": ..., "method": ...}}, or give the server a default (ava: in serving.yaml)',
        )
    for key in ("servable", "method"):
        if not isinstance(settings[key], str) or not settings[key]:
            raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT, f"extension_configuration '{key}' should be a name")
    settings.setdefault("version", 0)
    settings.setdefault("batch_size", 1)
    for key, low, high in (("version", 0, None), ("batch_size", 1, MAX_MEDIA_BATCH)):
        value = settings[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high and value > high):
            limit = f"{low} to {high}" if high else f"at least {low}"
            raise StreamEnd(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"extension_configuration '{key}' should be an integer {limit}, got {clip(json.dumps(value))}",
            )
    return settings


class _Stream:
    """One ProcessMediaStream call's state after its descriptor: what it runs, how frames come, the batch being
    gathered, and the sequence numbers of both sides."""

    def __init__(
        self, handler: "MediaGraphHandler", target: _Target, frame_format: FrameFormat, region: Optional[SharedRegion]
    ):
        self._handler = handler
        self.target = target
        self.format = frame_format
        self.region = region
        self.expected_sequence = 2  # the client's next message number
        self.sent = 1  # the server's last message number (its descriptor was 1)
        self.batches: set[_Batch] = set()  # every batch gathered or running, not yet settled
        self.batch = self._new_batch()  # the one being gathered
        self.share: Optional[StreamShare] = None  # set with answers, once the stream runs
        self.answers: Optional[OrderedAnswers] = None

    def _new_batch(self) -> "_Batch":
        batch = _Batch(self._handler.admission)
        self.batches.add(batch)
        return batch

    async def start(self, data: bytes, ticket: Ticket) -> Any:
        """A message read (``ticket`` counts it): the answer to come (see OrderedAnswers), or the end of the
        stream. The frame's memory is reserved before it is copied out of the region or decoded."""
        try:
            sequence, timestamp, source = self._message(data)
            need = await self._need(source, len(data))
            await ticket.grow_to(need)
            if not self.batch.frames and not self.batch.admit():
                self._handler.dispatcher.requests.refused(request_metrics.MEDIA_STREAM, request_metrics.SHUTTING_DOWN)
                return StopReading(StreamEnd(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN))
            frame = self._decode(source) if isinstance(source, memoryview) else self._take(source)
            _count(frame, ticket)
            return self._add(sequence, timestamp, frame, ticket)
        except StreamEnd as end:
            return StopReading(end)
        except FrameError as error:
            return StopReading(_frame_end(error))

    def _raw_need(self) -> int:
        """Besides its message, what a RAW frame takes: its rows read from the region, and its decoded copy."""
        fmt = self.format
        read = fmt.height * fmt.row_bytes if self.region is not None else 0
        return read + frame_size.raw_copy_bytes(fmt)

    async def _need(self, source: Any, message: int) -> int:
        """What a frame takes with its message (``message`` bytes), before it is read out of the region or
        decoded; StreamEnd (RESOURCE_EXHAUSTED) when that is more than one stream may hold."""
        fmt = self.format
        size: Optional[tuple[int, int]] = (fmt.width, fmt.height) if fmt.width and fmt.height else None
        if expected_length(fmt) is not None:
            extra = self._raw_need()
        else:
            read = 0  # what reading the frame out of the region copies
            head: Any = b""  # the bytes its header is read from
            if isinstance(source, memoryview):
                head = source
            elif self.region is not None and source.WhichOneof("content") == "content_reference":
                offset, length = source.content_reference.address_offset, source.content_reference.length_bytes
                read = self.region.check(offset, length)
                if size is None:
                    head = self.region.read(offset, min(length, frame_size.PEEK_BYTES))
            elif source.WhichOneof("content") == "content_bytes":
                head = source.content_bytes.bytes
            if size is None and len(head):
                size = frame_size.image_size(fmt, head[: frame_size.PEEK_BYTES])
                if size is None and len(head) > frame_size.PEEK_BYTES:  # a long header: read on a thread
                    size = await self._handler.off_loop.run(frame_size.image_size, fmt, head)
            # an image in the region whose header is not in its first bytes: the most a frame may decode to
            decoded = size[0] * size[1] * 3 if size is not None else MAX_PIXELS * 3 if read else 0
            extra = read + decoded * frame_size.DECODE_COPIES  # while it decodes; the frame alone after
        need = message + extra
        assert self.share is not None
        most = self.share.memory.per_stream
        if need > most:
            shape = f"{size[0]}x{size[1]} " if size is not None else ""
            raise StreamEnd(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"a {shape}frame takes {need} bytes of the server's stream memory to read and decode, "
                f"more than one stream may hold: {most} bytes, half of max_stream_memory_mb",
            )
        return need

    def flush(self) -> None:
        """Run the incomplete batch now, answered in a message that acknowledges nothing (ack 0): when the
        client half-closes, when the server drains, and when memory is short (this stream's share, or the
        server's budget for another stream: its frames then go back once run). Nothing once the stream's answers
        are complete (it is ending)."""
        batch = self.batch
        if not batch.frames or self.answers is None or self.answers.finished:
            return
        self.batch = self._new_batch()
        self.answers.add(self.run_batch(batch, 0, batch.frames[-1][1]), slot=False)

    def _message(self, data: bytes) -> tuple[int, int, Any]:
        """(sequence number, timestamp, what carries the frame: a view of its bytes in the message, or the
        sample)."""
        embedded = read_embedded(data) if self.region is None else None
        if embedded is not None:  # the common message, its frame a view of the message's bytes
            self._check_sequence(embedded.sequence_number)
            return embedded.sequence_number, embedded.timestamp, embedded.frame
        try:
            message: Any = parse_strict(pb.MediaStreamMessage, data)
        except InvalidMessage as exc:
            raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        self._check_sequence(message.sequence_number)
        payload = message.WhichOneof("payload")
        if payload == "media_stream_descriptor":
            raise StreamEnd(
                grpc.StatusCode.INVALID_ARGUMENT,
                "a second media_stream_descriptor: the stream's descriptor is its first message only",
            )
        if payload != "media_sample":
            raise StreamEnd(
                grpc.StatusCode.INVALID_ARGUMENT, f"message {message.sequence_number} carries no media_sample"
            )
        sample = message.media_sample
        return message.sequence_number, sample.timestamp, sample

    def _check_sequence(self, sequence: int) -> None:
        if sequence != self.expected_sequence:
            raise StreamEnd(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"message sequence_number {sequence}, expected {self.expected_sequence}",
            )
        self.expected_sequence += 1

    def _add(self, sequence: int, timestamp: int, frame: Any, ticket: Ticket) -> Any:
        """A frame joins the batch: its acknowledgement, or (when it completes the batch) the batch's run."""
        batch = self.batch
        batch.frames.append((sequence, timestamp, frame))
        batch.tickets.append(ticket)
        if len(batch.frames) < self.target.batch_size:
            return self._ack(sequence, timestamp, frame)
        self.batch = self._new_batch()
        return self.run_batch(batch, sequence, timestamp)

    def _take(self, sample: Any) -> Any:
        """The sample's frame (its bytes copied out of the message or the region now), decoded or decoding."""
        content = sample.WhichOneof("content")
        if self.region is None:
            if content != "content_bytes":
                raise StreamEnd(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the stream sends its frames embedded: a sample needs content_bytes",
                )
            data: Any = sample.content_bytes.bytes
        else:
            if content != "content_reference":
                raise StreamEnd(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the stream sends its frames through shared memory: a sample needs content_reference",
                )
            return self._shared_frame(sample.content_reference)
        return self._decode(data)

    def _shared_frame(self, reference: Any) -> Any:
        """A frame read from the stream's region (its reference checked first, the read bounded by what the frame
        uses): read and decoded now when small, else read and decoded on a thread, off the event loop."""
        region, offset, length = self.region, reference.address_offset, reference.length_bytes
        assert region is not None
        if region.check(offset, length) < LARGE_READ:
            return self._decode(region.read(offset, length))
        return asyncio.get_running_loop().create_task(
            self._handler.off_loop.run(lambda: self.format.decode(region.read(offset, length)))
        )

    def _decode(self, data: Any) -> Any:
        """A RAW frame decoded now (a view or a cheap copy), or the task decoding an image, off the event loop."""
        if expected_length(self.format) is not None:
            return self.format.decode(data)
        return asyncio.get_running_loop().create_task(self._handler.off_loop.run(self.format.decode, data))

    async def _ack(self, sequence: int, timestamp: int, frame: Any) -> Any:
        if isinstance(frame, asyncio.Future):
            await frame  # a frame that cannot be decoded ends the stream here, in order
        return sequence, pb.MediaSample(timestamp=timestamp)

    async def run_batch(self, batch: "_Batch", sequence: int, timestamp: int) -> Any:
        """Run a batch of frames; the reply that acknowledges its last frame (``sequence``), with every frame's
        inferences. Its frames' memory and admission are given back once it has run, or failed."""
        nbytes = 0
        try:
            frames = [await f if isinstance(f, asyncio.Future) else f for _, _, f in batch.frames]
            nbytes = sum(f.nbytes for f in frames)
            return sequence, pb.MediaSample(timestamp=timestamp, inferences=await self._infer(batch.frames, frames))
        finally:
            self.settle(batch, nbytes)

    def settle(self, batch: "_Batch", nbytes: int = 0) -> None:
        batch.settle(nbytes)
        self.batches.discard(batch)

    async def _infer(self, batch: list, frames: list[np.ndarray]) -> list:
        """The inferences of a batch's frames (admitted with its first frame: see ``_Batch``)."""
        handler, target = self._handler, self.target
        with handler.dispatcher.requests.tallied(request_metrics.MEDIA_STREAM):  # (a cancelled batch counted so)
            try:
                route = handler.dispatcher.resolve(target.servable, target.method, target.version)
                instances = [
                    {target.input_name: RawTensor(_dtypes.MS_UINT8, frame.shape, frame.data.cast("B"))}
                    for frame in frames
                ]
                results = await handler.dispatcher.run(route, instances)
                inferences = []
                for (sequence, timestamp, _), outcome in zip(batch, results):
                    if isinstance(outcome, ServingError):
                        raise outcome
                    found = frame_inferences(outcome)
                    if target.batch_size > 1:
                        for inference in found:
                            inference.extensions["sequence_number"] = str(sequence)
                            inference.extensions["timestamp"] = str(timestamp)
                    inferences += found
                return inferences
            except ServingError as err:
                raise StreamEnd(*failure_status("ProcessMediaStream", err)) from None

    def reply(self, ack: int, sample: Any) -> bytes:
        self.sent += 1
        return pb.MediaStreamMessage(
            sequence_number=self.sent, ack_sequence_number=ack, media_sample=sample
        ).SerializeToString()

    def close(self) -> None:
        """The stream has ended: its batches are settled (a frame still decoding is cancelled), its memory given
        back, its region closed."""
        for batch in list(self.batches):
            for _, _, frame in batch.frames:
                if isinstance(frame, asyncio.Future):
                    frame.cancel()
            self.settle(batch)
        if self.share is not None:
            released = self.share.close()
            trimmer = self._handler.admission.trimmer
            if trimmer is not None:  # frames held for a batch that never ran: their memory goes back too
                trimmer.note(released)
        if self.region is not None:
            self.region.close()


class _Batch:
    """Frames gathered for one run: (sequence number, timestamp, frame or its decoding task), the tickets that
    count them, and the admission the batch holds from its first frame until it has run, so that a drain waits
    for the frames it acknowledged (and runs them: see ``_Stream.flush``)."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self.frames: list[tuple[int, int, Any]] = []
        self.tickets: list[Ticket] = []
        self.admitted = False

    def admit(self) -> bool:
        """Admit the batch (with its first frame); False once the server drains."""
        self.admitted = self._admission.enter()
        return self.admitted

    def settle(self, nbytes: int = 0) -> None:
        """The batch has run, or will not: its frames' memory goes back, its admission ends (once)."""
        for ticket in self.tickets:
            ticket.release()
        if self.admitted:
            self.admitted = False
            self._admission.leave(nbytes)


def _count(frame: Any, ticket: Ticket) -> None:
    """``ticket`` counts the decoded frame from when it is decoded (its message and reading go back then)."""
    if isinstance(frame, asyncio.Future):
        frame.add_done_callback(
            lambda done: (
                ticket.resize(done.result().nbytes) if not done.cancelled() and done.exception() is None else None
            )
        )
    else:
        ticket.resize(frame.nbytes)


class MediaGraphHandler:
    """The MediaGraphExtension service of the gRPC servers."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        off_loop: OffLoop,
        admission: Admission,
        defaults: Optional[MediaStreamConfig] = None,
        regions: Optional[ClientRegions] = None,
        memory: Optional[StreamMemory] = None,
    ):
        self.dispatcher = dispatcher
        self.off_loop = off_loop
        self.admission = admission
        self.defaults = defaults
        self.regions = regions  # None: this server takes no client shared memory (the owners and read bound else)
        self.memory = memory  # None: the master's stream memory (stream_memory.server_memory())

    def rpc_handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME, {"ProcessMediaStream": grpc.stream_stream_rpc_method_handler(self.process)}
        )

    async def process(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """One media stream (an async generator, as gRPC's stream handlers and the access check take it)."""
        stream: Optional[_Stream] = None
        end: Optional[StreamEnd] = None
        try:
            try:
                first = await requests.__anext__()
            except StopAsyncIteration:
                return  # a client that closed without a word
            stream, reply = await self._open(first)
            yield reply
            stream.answers = answers = OrderedAnswers(MAX_IN_FLIGHT)
            stream.share = (self.memory or server_memory()).share()
            # the incomplete batch is answered (ack 0) when the client half-closes, when the server drains (the
            # stream then ends UNAVAILABLE, once every frame it acknowledged has been answered), and when memory
            # is short
            stream.share.set_flush(stream.flush)
            reading = asyncio.get_running_loop().create_task(
                read_into(
                    answers,
                    requests,
                    stream.start,
                    stream.share,
                    drained=StreamEnd(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN),
                )
            )
            try:
                async for answer in answers.answers():
                    yield stream.reply(*answer)
                end = await reading
            finally:
                reading.cancel()
                await answers.close()
                await asyncio.gather(reading, return_exceptions=True)
        except StreamEnd as raised:
            end = raised
        except FrameError as error:
            end = _frame_end(error)
        except Exception as exc:  # a defect of ours: the stream ends INTERNAL with a text, never UNKNOWN
            log.exception("ProcessMediaStream failed")
            end = StreamEnd(grpc.StatusCode.INTERNAL, f"ProcessMediaStream failed: {exc}")
        finally:
            if stream is not None:
                stream.close()
        if end is not None:
            await context.abort(end.status, end.message)

    async def _open(self, data: bytes) -> tuple[_Stream, bytes]:
        """The stream its descriptor describes, and the server's descriptor that answers it."""
        try:
            message: Any = parse_strict(pb.MediaStreamMessage, data)
        except InvalidMessage as exc:
            raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if message.WhichOneof("payload") != "media_stream_descriptor":
            raise StreamEnd(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message of a stream must be its media_stream_descriptor"
            )
        if message.sequence_number != 1:
            raise StreamEnd(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the descriptor's sequence_number is {message.sequence_number}, a stream starts at 1",
            )
        descriptor = message.media_stream_descriptor
        target = self._target(_configuration(descriptor.extension_configuration, self.defaults))
        frame_format = FrameFormat.from_descriptor(descriptor.media_descriptor)
        region = None
        if descriptor.HasField("shared_memory_buffer_transfer_properties"):
            if self.regions is None:  # off unless the server allows client shared memory, as its other forms
                raise StreamEnd(status_of(FeatureDisabled(DISABLED)), DISABLED)
            properties = descriptor.shared_memory_buffer_transfer_properties
            region = SharedRegion.open(
                properties.handle_name,
                properties.length_bytes,
                frame_format,
                self.regions.owners,
                self.regions.max_read,
            )
            frame_format = region.frame_format  # frames come out of the region packed
        reply = pb.MediaStreamMessage(
            sequence_number=1,
            ack_sequence_number=1,
            media_stream_descriptor={"media_descriptor": {"timescale": descriptor.media_descriptor.timescale}},
        )
        return _Stream(self, target, frame_format, region), reply.SerializeToString()

    def _target(self, settings: dict) -> _Target:
        try:
            route = self.dispatcher.resolve(settings["servable"], settings["method"], settings["version"])
        except ServingError as err:
            raise StreamEnd(status_of(err), err.message) from None
        inputs = route.signature.inputs
        if len(inputs) != 1:
            raise StreamEnd(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"method {route.method} of servable {route.servable} takes {len(inputs)} inputs "
                f"({', '.join(inputs)}); a media stream feeds one, the frame",
            )
        return _Target(route.servable, route.method, settings["version"], settings["batch_size"], inputs[0])
