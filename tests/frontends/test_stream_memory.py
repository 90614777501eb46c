"""One memory budget for the master's streams (``max_stream_memory_mb``, here 64 MB), on a real server with
real gRPC clients: ModelStreamInfer clients that never read their 4 MB answers, and media streams whose
batches never complete with PNG frames that decode to 5.9 MB, hold at most the budget (master RSS measured),
other calls still answer, and everything goes back once the clients cancel; a frame larger than a stream's
share ends its stream RESOURCE_EXHAUSTED."""

from __future__ import annotations

import io
import json
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from support import servables
from support.messages import grpc_inference as oip
from support.messages import media_graph as pb
from support.metrics import scrape, value
from support.paths import BUNDLED_SERVABLES
from support.processes import free_addresses, start_server, wait_until

pytestmark = pytest.mark.server

MB = 1 << 20
BUDGET = 64 * MB
SHARE = BUDGET // 2  # what one stream may hold
ANSWER = 4_000_000  # bytes of each ModelStreamInfer answer
SLACK = 64 * MB  # what the master may grow besides the budget: gRPC's buffers, a message per stream, the heap
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
INFER = "/inference.GRPCInferenceService/ModelInfer"
LIVE = "/inference.GRPCInferenceService/ServerLive"
MEDIA = "/microsoft.azure.media.live_video_analytics.extensibility.grpc.v1.MediaGraphExtension/ProcessMediaStream"

SIZED_CONFIG = """
import numpy as np
from mindserve.server import register


def zeros(n):
    return np.zeros(int(n), np.uint8)


@register.register_method(output_names=["y"])
def sized(n):
    return register.add_stage(zeros, n, outputs_count=1)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream_memory")
    servables.write(str(root / "servables"), "sized", SIZED_CONFIG)
    address, metrics = free_addresses(2)
    process = start_server(
        root,
        f"""
        server.start_servables([server.ServableStartConfig({str(root / "servables")!r}, "sized", device_ids=0),
                                server.ServableStartConfig({BUNDLED_SERVABLES!r}, "frames", device_ids=0)])
        server.context.set_max_stream_memory_mb({BUDGET // MB})
        server.start_grpc_server({address!r})
        server.start_metrics_server({metrics!r})
    """,
        address,
    )
    process.metrics = metrics
    yield process
    process.stop()


def _status(pid: int, key: str) -> int:
    """A /proc/<pid>/status figure (VmRSS, VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def _reset_peak(pid: int) -> None:
    """Start VmHWM (the peak RSS) again from the RSS now."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def stream_memory(server) -> float:
    return value(scrape(server.metrics), "mindserve_stream_memory_bytes")


def sized_request(n: int, request_id: str = "") -> bytes:
    request = oip.ModelInferRequest(model_name="sized.sized", id=request_id)
    request.inputs.add(name="n", datatype="INT64", shape=[1])
    request.raw_input_contents.append(np.array([n], np.int64).tobytes())
    return request.SerializeToString()


def answer_size(response: oip.ModelInferResponse) -> int:
    return len(response.raw_output_contents[0])


def other_calls_answer(channel: grpc.Channel) -> None:
    """ServerLive and a ModelInfer answer (within a generous deadline: a stall of seconds fails)."""
    live = channel.unary_unary(
        LIVE,
        request_serializer=lambda r: r.SerializeToString(),
        response_deserializer=oip.ServerLiveResponse.FromString,
    )
    assert live(oip.ServerLiveRequest(), timeout=10).live
    infer = channel.unary_unary(INFER, response_deserializer=oip.ModelInferResponse.FromString)
    assert answer_size(infer(sized_request(1000), timeout=10)) == 1000


class NeverReads:
    """A ModelStreamInfer client that sends requests for 4 MB answers and never reads one."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        self.done = threading.Event()
        self.call = self.channel.stream_stream(STREAM)(self._requests(), timeout=60)

    def _requests(self):
        for i in range(200):
            if self.done.is_set():
                return
            yield sized_request(ANSWER, f"r{i}")
        self.done.wait(60)

    def cancel(self) -> None:
        self.done.set()
        self.call.cancel()
        self.channel.close()


def _steady(read, what: str) -> float:
    """``read()`` once it is above 0 and two readings half a second apart agree (a bounded wait)."""
    readings = [read()]

    def settled() -> bool:
        time.sleep(0.5)
        readings.append(read())
        return readings[-1] == readings[-2] > 0

    wait_until(settled, what, 30)
    return readings[-1]


def test_model_stream_infer_clients_that_never_read_hold_at_most_the_budget(server):
    pid = server.proc.pid
    with grpc.insecure_channel(server.address) as channel:
        for _ in range(3):  # the first large answers' allocations belong to the baseline
            other_calls_answer(channel)
            infer = channel.unary_unary(INFER, response_deserializer=oip.ModelInferResponse.FromString)
            assert answer_size(infer(sized_request(ANSWER), timeout=30)) == ANSWER
        baseline = _status(pid, "VmRSS")
        _reset_peak(pid)
        clients = [NeverReads(server.address) for _ in range(3)]
        try:
            held = _steady(lambda: stream_memory(server), "the streams' memory to settle")
            # the streams stopped reading with the budget nearly full: no stream more than its share
            assert BUDGET - 2 * ANSWER < held <= BUDGET
            other_calls_answer(channel)
            assert _status(pid, "VmHWM") - baseline < BUDGET + SLACK
        finally:
            for client in clients:
                client.cancel()
        wait_until(lambda: stream_memory(server) == 0, "the cancelled streams to give their memory back", 30)
        # a new stream works, and reads its answers
        call = channel.stream_stream(STREAM, response_deserializer=oip.ModelStreamInferResponse.FromString)
        got = list(
            call(iter([sized_request(ANSWER, "a"), sized_request(10, "b"), sized_request(ANSWER, "c")]), timeout=30)
        )
        assert [(r.error_message, r.infer_response.id, answer_size(r.infer_response)) for r in got] == [
            ("", "a", ANSWER),
            ("", "b", 10),
            ("", "c", ANSWER),
        ]
        assert stream_memory(server) == 0


# ---- media streams ----


def png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def descriptor(batch_size: int) -> pb.MediaStreamMessage:
    fmt = pb.VideoFrameSampleFormat
    return pb.MediaStreamMessage(
        sequence_number=1,
        media_stream_descriptor={
            "media_descriptor": {"timescale": 90000, "video_frame_sample_format": {"encoding": fmt.PNG}},
            "extension_configuration": json.dumps(
                {"servable": "frames", "method": "intensity", "batch_size": batch_size}
            ),
        },
    )


def frame(sequence: int, data: bytes) -> pb.MediaStreamMessage:
    return pb.MediaStreamMessage(
        sequence_number=sequence, media_sample={"timestamp": sequence, "content_bytes": {"bytes": data}}
    )


class MediaClient:
    """A media stream that sends its descriptor and ``frames`` frames, then waits without half-closing; its
    replies are collected on a thread."""

    def __init__(self, address: str, data: bytes, frames: int, batch_size: int = 64):
        self.channel = grpc.insecure_channel(address)
        self.leave = threading.Event()
        self.replies: list = []
        self.ended = None
        messages = [descriptor(batch_size)] + [frame(k, data) for k in range(2, 2 + frames)]
        self.call = self.channel.stream_stream(
            MEDIA,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.MediaStreamMessage.FromString,
        )(self._send(messages), timeout=60)
        self.reader = threading.Thread(target=self._read)
        self.reader.start()

    def _send(self, messages):
        yield from messages
        self.leave.wait(60)

    def _read(self) -> None:
        try:
            for reply in self.call:
                self.replies.append(reply)
        except grpc.RpcError as exc:
            self.ended = exc

    def acked(self) -> list:
        return [r.ack_sequence_number for r in self.replies[1:] if r.ack_sequence_number]

    def run(self) -> list:
        """The frames whose inferences came (in ack-0 replies: their batch was run early), in order."""
        return [int(i.extensions["sequence_number"]) for r in self.replies[1:] for i in r.media_sample.inferences]

    def cancel(self) -> None:
        self.leave.set()
        self.call.cancel()
        self.reader.join(30)
        self.channel.close()


def test_media_batches_that_never_complete_hold_at_most_the_budget(server):
    pid = server.proc.pid
    data = png(1400)  # 5.9 MB decoded (23.5 MB while it decodes): a stream's share holds two
    assert len(data) < 200_000
    with grpc.insecure_channel(server.address) as channel:
        other_calls_answer(channel)
        warm = MediaClient(server.address, data, 1, batch_size=1)
        wait_until(lambda: warm.acked() == [2], "a first frame's answer", 30)
        warm.cancel()
        wait_until(lambda: stream_memory(server) == 0, "the first stream's memory back", 30)
        baseline = _status(pid, "VmRSS")
        _reset_peak(pid)
        clients = [MediaClient(server.address, data, 4) for _ in range(3)]
        try:
            for client in clients:
                wait_until(lambda: client.acked() == [2, 3, 4, 5], "every frame acknowledged", 60)
            held = _steady(lambda: stream_memory(server), "the streams' memory to settle")
            assert 0 < held <= BUDGET
            # the incomplete batches were run early to make room (answered in order, acknowledging nothing): at
            # the latest when a stream's third frame came, so frames 2 and 3 have their inferences, each once
            for client in clients:
                run = client.run()
                assert run == [2, 3, 4, 5][: len(run)] and len(run) >= 2, run
                assert client.ended is None
            other_calls_answer(channel)
            assert _status(pid, "VmHWM") - baseline < BUDGET + SLACK
        finally:
            for client in clients:
                client.cancel()
        wait_until(lambda: stream_memory(server) == 0, "the cancelled streams to give their memory back", 30)
        # the memory goes back to the system too (the heap is trimmed a moment after)
        wait_until(lambda: _status(pid, "VmRSS") - baseline < SLACK, "the master's memory to go back", 30)


def test_a_frame_larger_than_a_streams_share_ends_it_resource_exhausted(server):
    data = png(6000)  # 108 MB decoded
    message = frame(2, data)
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream(
            MEDIA,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.MediaStreamMessage.FromString,
        )
        replies = call(iter([descriptor(1), message]), timeout=30)
        got = []
        with pytest.raises(grpc.RpcError) as ended:
            for reply in replies:
                got.append(reply)
        assert len(got) == 1  # the descriptor's answer
        assert (ended.value.code(), ended.value.details()) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"a 6000x6000 frame takes {message.ByteSize() + 3 * 6000 * 6000 * 3} bytes of the server's stream memory "
            f"to read and decode, more than one stream may hold: {SHARE} bytes, half of max_stream_memory_mb",
        )
        other_calls_answer(channel)
    assert stream_memory(server) == 0
