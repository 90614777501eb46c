"""Streams at a real stop (SIGTERM): a media stream's acknowledged frames of an incomplete batch are run and
answered before the stream ends UNAVAILABLE with the shutting-down text, and an idle ModelStreamInfer stream
ends the same way after its answers, at once rather than cut off when the listener closes."""

from __future__ import annotations

import json
import queue
import signal
import threading

import grpc
import numpy as np
import pytest

from support.messages import grpc_inference as oip
from support.messages import media_graph as pb
from support.paths import BUNDLED_SERVABLES
from support.processes import free_addresses, start_server

pytestmark = pytest.mark.server

SHUTTING_DOWN = "the server is shutting down: send the request again, to another replica"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
MEDIA = "/microsoft.azure.media.live_video_analytics.extensibility.grpc.v1.MediaGraphExtension/ProcessMediaStream"


def _media_messages(hold: threading.Event):
    fmt = pb.VideoFrameSampleFormat
    yield pb.MediaStreamMessage(
        sequence_number=1,
        media_stream_descriptor={
            "media_descriptor": {
                "timescale": 90000,
                "video_frame_sample_format": {
                    "encoding": fmt.RAW,
                    "pixel_format": fmt.RGB24,
                    "dimensions": {"width": 64, "height": 48},
                },
            },
            "extension_configuration": json.dumps({"servable": "frames", "method": "intensity", "batch_size": 4}),
        },
    )
    for sequence, value in ((2, 250), (3, 10)):
        yield pb.MediaStreamMessage(
            sequence_number=sequence,
            media_sample={
                "timestamp": 100 * sequence,
                "content_bytes": {"bytes": np.full((48, 64, 3), value, np.uint8).tobytes()},
            },
        )
    hold.wait(60)  # no half-close: the batch of 4 stays incomplete


def _add_request(request_id: str) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="add.add_common", id=request_id)
    for name in ("x1", "x2"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 2, 2])
        request.raw_input_contents.append(np.ones((1, 2, 2), np.float32).tobytes())
    return request


def _collect(call, into: queue.Queue) -> None:
    """Every reply of ``call``, then ("end", code, details) or ("end", "OK", "")."""
    try:
        for reply in call:
            into.put(reply)
        into.put(("end", "OK", ""))
    except grpc.RpcError as exc:
        into.put(("end", exc.code(), exc.details()))


def test_a_stop_answers_the_frames_a_media_stream_acknowledged_then_ends_the_streams_unavailable(tmp_path):
    (address,) = free_addresses(1)
    server = start_server(
        tmp_path,
        f"""
        server.start_servables([server.ServableStartConfig({BUNDLED_SERVABLES!r}, "frames", device_ids=0),
                                server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0)])
        server.start_grpc_server({address!r})
    """,
        address,
    )
    hold = threading.Event()
    media_replies: queue.Queue = queue.Queue()
    oip_replies: queue.Queue = queue.Queue()
    threads = []
    try:
        with grpc.insecure_channel(address) as channel:
            media = channel.stream_stream(
                MEDIA,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.MediaStreamMessage.FromString,
            )(_media_messages(hold), timeout=60)
            requests: queue.Queue = queue.Queue()
            requests.put(_add_request("a"))
            stream = channel.stream_stream(
                STREAM,
                request_serializer=lambda r: r.SerializeToString(),
                response_deserializer=oip.ModelStreamInferResponse.FromString,
            )(iter(requests.get, None), timeout=60)
            threads = [
                threading.Thread(target=_collect, args=(media, media_replies)),
                threading.Thread(target=_collect, args=(stream, oip_replies)),
            ]
            for thread in threads:
                thread.start()
            got = [media_replies.get(timeout=30) for _ in range(3)]
            assert [(r.sequence_number, r.ack_sequence_number, len(r.media_sample.inferences)) for r in got] == [
                (1, 1, 0),
                (2, 2, 0),
                (3, 3, 0),
            ]  # both frames acknowledged, their batch incomplete
            assert oip_replies.get(timeout=30).infer_response.id == "a"
            code = server.stop(signal.SIGTERM)
            last, end = media_replies.get(timeout=30), media_replies.get(timeout=30)
            assert (last.sequence_number, last.ack_sequence_number, last.media_sample.timestamp) == (4, 0, 300)
            assert [
                (i.extensions["sequence_number"], i.classification.tag.value) for i in last.media_sample.inferences
            ] == [("2", "light"), ("3", "dark")]
            assert end == ("end", grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            assert oip_replies.get(timeout=30) == ("end", grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            requests.put(None)
    finally:
        hold.set()
        for thread in threads:
            thread.join(30)
        server.stop(signal.SIGKILL)
    assert code == 0, server.output
    assert "still in progress" not in server.output  # the drain did not wait out its grace
