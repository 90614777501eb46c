"""The video-analytics media-stream extension (MediaGraphExtension/ProcessMediaStream) against a client generated
in the test from the contract (mindserve/_proto/media_graph.proto, compiled here with grpc_tools into the default
pool, apart from the server's): the handshake, sequence numbers, acks and timestamps; embedded PNG, JPG, BMP and
RAW frames in every layout; frames through shared memory; batch_size; every bad case ending only its stream with
a clear status; a client that leaves mid-stream; credentials."""

from __future__ import annotations

import base64
import importlib
import io
import json
import os
import subprocess
import sys
import threading
import uuid

import grpc
import numpy as np
import pytest
from PIL import Image

from mindserve.client import Client
from support import servables
from support.metrics import pending
from support.paths import BUNDLED_SERVABLES, REPO
from support.processes import free_addresses, start_server, wait_until

pytestmark = pytest.mark.server

PROBE_CONFIG = """
import os
import time

import numpy as np
from mindserve.server import register

HERE = os.path.dirname(__file__)


def hold(frame):
    open(os.path.join(HERE, "started"), "w").close()
    deadline = time.monotonic() + 60
    while os.path.exists(os.path.join(HERE, "hold")) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "held", np.float32(1)


def batch_sizes(instances):
    return [(str(len(instances)), np.float32(1)) for _ in instances]


@register.register_method(output_names=["label", "confidence"])
def held(frame):
    return register.add_stage(hold, frame, outputs_count=2)


@register.register_method(output_names=["label", "confidence"])
def batch_size(frame):
    return register.add_stage(batch_sizes, frame, outputs_count=2, batch_size=0)


def describe(frame):
    h, w, _ = frame.shape
    first, last = frame[0, 0], frame[h - 1, w - 1]
    return f"{h}x{w} {first[0]},{first[1]},{first[2]} {last[0]},{last[1]},{last[2]}", np.float32(0.25)


def boxes(frame):
    return np.array([3, 5], np.int64), np.array([0.9, 0.8], np.float32), \\
        np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.25, 0.25]], np.float32)


@register.register_method(output_names=["label", "confidence"])
def probe(frame):
    return register.add_stage(describe, frame, outputs_count=2)


@register.register_method(output_names=["label", "confidence", "box"])
def detect(frame):
    return register.add_stage(boxes, frame, outputs_count=3)
"""


@pytest.fixture(scope="module")
def contract(tmp_path_factory):
    """The client side of the contract: messages and the service stub, compiled from the .proto."""
    out = tmp_path_factory.mktemp("contract")
    proto_dir = os.path.join(REPO, "mindserve", "_proto")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.join(proto_dir, "media_graph.proto"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    sys.path.insert(0, str(out))
    try:
        messages, stubs = importlib.import_module("media_graph_pb2"), importlib.import_module("media_graph_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return messages, stubs


@pytest.fixture(scope="module")
def ava(tmp_path_factory):
    root = tmp_path_factory.mktemp("ava")
    servables.write(str(root / "servables"), "frame_probe", PROBE_CONFIG)
    address, guarded, metrics = free_addresses(3)
    process = start_server(
        root,
        f"""
        server.start_servables([server.ServableStartConfig({BUNDLED_SERVABLES!r}, "frames", device_ids=0),
                                server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0),
                                server.ServableStartConfig({str(root / "servables")!r}, "frame_probe",
                                                           device_ids=0)])
        server.start_grpc_server({address!r}, media_stream=server.MediaStreamConfig("frames", "intensity"),
                                 allow_client_shm=True)
        server.start_grpc_server({guarded!r}, access=server.AccessConfig(consumers={{"camera": "s3cret"}}))
        server.start_metrics_server({metrics!r})
    """,
        address,
    )
    process.metrics = metrics
    process.guarded = guarded
    process.probe_dir = root / "servables" / "frame_probe"
    yield process
    process.stop()


class Session:
    """A client's side of one stream: it numbers its messages from 1."""

    def __init__(self, contract, address: str, metadata=()):
        self.pb, stubs = contract
        self.channel = grpc.insecure_channel(address)
        self.stub = stubs.MediaGraphExtensionStub(self.channel)
        self.metadata = metadata
        self.sent = 0

    def message(self, **payload):
        self.sent += 1
        return self.pb.MediaStreamMessage(**{"sequence_number": self.sent, **payload})

    def descriptor(self, config=None, encoding="RAW", pixel="RGB24", width=64, height=48, stride=0, shm=None):
        fmt = self.pb.VideoFrameSampleFormat
        media = {
            "timescale": 90000,
            "video_frame_sample_format": {
                "encoding": fmt.Encoding.Value(encoding),
                "pixel_format": fmt.PixelFormat.Value(pixel),
                "dimensions": {"width": width, "height": height},
                "stride_bytes": stride,
            },
        }
        descriptor = {"media_descriptor": media, "extension_configuration": json.dumps(config) if config else ""}
        if shm is not None:
            descriptor["shared_memory_buffer_transfer_properties"] = {"handle_name": shm[0], "length_bytes": shm[1]}
        return self.message(media_stream_descriptor=descriptor)

    def frame(self, data: bytes, timestamp: int):
        return self.message(media_sample={"timestamp": timestamp, "content_bytes": {"bytes": data}})

    def reference(self, offset: int, length: int, timestamp: int):
        return self.message(
            media_sample={
                "timestamp": timestamp,
                "content_reference": {"address_offset": offset, "length_bytes": length},
            }
        )

    def run(self, messages) -> list:
        with self.channel:
            return list(self.stub.ProcessMediaStream(iter(messages), metadata=self.metadata, timeout=60))

    def fails(self, messages):
        """The status that ends the stream, and the replies before it."""
        got = []
        with self.channel, pytest.raises(grpc.RpcError) as ended:
            for reply in self.stub.ProcessMediaStream(iter(messages), metadata=self.metadata, timeout=60):
                got.append(reply)
        return ended.value.code(), ended.value.details(), got


def solid(value: int, width=64, height=48) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def tags(reply) -> list:
    return [
        (i.classification.tag.value, round(i.classification.tag.confidence, 3)) for i in reply.media_sample.inferences
    ]


def test_handshake_acks_timestamps_and_the_default_method(ava, contract):
    session = Session(contract, ava.address)
    frames = [solid(250), solid(10), solid(200)]
    replies = session.run([session.descriptor()] + [session.frame(f.tobytes(), 3000 * i) for i, f in enumerate(frames)])
    first = replies[0]
    assert (first.sequence_number, first.ack_sequence_number, first.WhichOneof("payload")) == (
        1,
        1,
        "media_stream_descriptor",
    )
    assert first.media_stream_descriptor.media_descriptor.timescale == 90000
    assert [(r.sequence_number, r.ack_sequence_number, r.media_sample.timestamp) for r in replies[1:]] == [
        (2, 2, 0),
        (3, 3, 3000),
        (4, 4, 6000),
    ]
    assert [tags(r) for r in replies[1:]] == [[("light", 0.98)], [("dark", 0.961)], [("light", 0.784)]]
    assert all(r.media_sample.inferences[0].type == contract[0].Inference.CLASSIFICATION for r in replies[1:])


@pytest.mark.parametrize(
    "pixel, channels, bpp",
    [
        ("RGB24", (0, 1, 2), 3),
        ("BGR24", (2, 1, 0), 3),
        ("RGBA", (0, 1, 2), 4),
        ("BGRA", (2, 1, 0), 4),
        ("ARGB", (1, 2, 3), 4),
        ("ABGR", (3, 2, 1), 4),
    ],
)
def test_raw_layouts_with_padded_rows_reach_the_method_as_rgb(ava, contract, pixel, channels, bpp):
    width, height, stride = 5, 3, 5 * bpp + 7
    rows = np.zeros((height, stride), np.uint8)
    pixels = rows[:, : width * bpp].reshape(height, width, bpp)
    pixels[0, 0, list(channels)] = (10, 20, 30)
    pixels[height - 1, width - 1, list(channels)] = (40, 50, 60)
    rows[:, width * bpp :] = 99  # the padding is never read
    session = Session(contract, ava.address)
    replies = session.run(
        [
            session.descriptor(
                {"servable": "frame_probe", "method": "probe"}, pixel=pixel, width=width, height=height, stride=stride
            ),
            session.frame(rows.tobytes(), 7),
        ]
    )
    assert tags(replies[1]) == [("3x5 10,20,30 40,50,60", 0.25)]


@pytest.mark.parametrize("encoding, pil_format", [("PNG", "PNG"), ("BMP", "BMP"), ("JPG", "JPEG")])
def test_encoded_frames(ava, contract, encoding, pil_format):
    def encoded(value):
        buffer = io.BytesIO()
        Image.fromarray(solid(value)).save(buffer, format=pil_format)
        return buffer.getvalue()

    session = Session(contract, ava.address)
    replies = session.run(
        [session.descriptor(encoding=encoding), session.frame(encoded(240), 1), session.frame(encoded(20), 2)]
    )
    assert [tags(r)[0][0] for r in replies[1:]] == ["light", "dark"]


def test_entities_with_boxes(ava, contract):
    session = Session(contract, ava.address)
    replies = session.run(
        [session.descriptor({"servable": "frame_probe", "method": "detect"}), session.frame(solid(0).tobytes(), 1)]
    )
    found = [
        (
            i.type,
            i.entity.tag.value,
            round(i.entity.tag.confidence, 2),
            [round(v, 2) for v in (i.entity.box.l, i.entity.box.t, i.entity.box.w, i.entity.box.h)],
        )
        for i in replies[1].media_sample.inferences
    ]
    entity = contract[0].Inference.ENTITY
    assert found == [(entity, "3", 0.9, [0.1, 0.2, 0.3, 0.4]), (entity, "5", 0.8, [0.5, 0.5, 0.25, 0.25])]


@pytest.fixture
def region():
    """A client's shared memory file in /dev/shm, removed after the test (the server never removes it)."""
    name = f"ava-test-{uuid.uuid4().hex}"
    path = os.path.join("/dev/shm", name)
    yield name, path
    if os.path.lexists(path):
        os.unlink(path)


def test_frames_through_shared_memory(ava, contract, region):
    name, path = region
    frames = [solid(v) for v in (250, 5, 128, 127)]
    size = frames[0].nbytes
    with open(path, "wb") as f:
        for frame in frames:
            f.write(frame.tobytes())
    session = Session(contract, ava.address)
    replies = session.run(
        [session.descriptor(shm=(name, size * 4))] + [session.reference(size * i, size, i) for i in range(4)]
    )
    assert [tags(r)[0][0] for r in replies[1:]] == ["light", "dark", "light", "dark"]
    assert [r.ack_sequence_number for r in replies[1:]] == [2, 3, 4, 5]
    assert os.path.exists(path)  # the client's file stays the client's


def test_batch_size_3_with_10_frames(ava, contract):
    session = Session(contract, ava.address)
    values = [250 if i % 2 else 10 for i in range(10)]
    replies = session.run(
        [session.descriptor({"servable": "frames", "method": "intensity", "batch_size": 3})]
        + [session.frame(solid(v).tobytes(), 100 * i) for i, v in enumerate(values)]
    )
    assert [(r.sequence_number, r.ack_sequence_number) for r in replies[1:]] == [
        (2, 2),
        (3, 3),
        (4, 4),
        (5, 5),
        (6, 6),
        (7, 7),
        (8, 8),
        (9, 9),
        (10, 10),
        (11, 11),
        (12, 0),
    ]
    counts = [len(r.media_sample.inferences) for r in replies[1:]]
    assert counts == [0, 0, 3, 0, 0, 3, 0, 0, 3, 0, 1]
    every = [i for r in replies[1:] for i in r.media_sample.inferences]
    assert [i.extensions["sequence_number"] for i in every] == [str(s) for s in range(2, 12)]
    assert [i.extensions["timestamp"] for i in every] == [str(100 * k) for k in range(10)]
    assert [i.classification.tag.value for i in every] == ["light" if v > 128 else "dark" for v in values]
    assert replies[-1].media_sample.timestamp == 900


INVALID = grpc.StatusCode.INVALID_ARGUMENT
BAD_STREAMS = [
    (lambda s: [s.frame(b"x", 1)], INVALID, "the first message of a stream must be its media_stream_descriptor"),
    (
        lambda s: [s.descriptor(), s.descriptor()],
        INVALID,
        "a second media_stream_descriptor: the stream's descriptor is its first message only",
    ),
    (lambda s: [s.descriptor(), s.message()], INVALID, "message 2 carries no media_sample"),
    (
        lambda s: [s.descriptor(), s.message(media_sample={"timestamp": 1})],
        INVALID,
        "the stream sends its frames embedded: a sample needs content_bytes",
    ),
    (
        lambda s: [s.descriptor(width=0)],
        grpc.StatusCode.OUT_OF_RANGE,
        "RAW frame dimensions 0x48: both must be at least 1",
    ),
    (
        lambda s: [s.descriptor(width=100000)],
        grpc.StatusCode.OUT_OF_RANGE,
        "frame dimensions 100000x48 exceed the limit of 8192x8192",
    ),
    (
        lambda s: [s.descriptor(pixel="YUV420P")],
        INVALID,
        "pixel format YUV420P is not supported for RAW frames: send RGB24, BGR24, RGBA, BGRA, ARGB, ABGR",
    ),
    (
        lambda s: [s.descriptor(), s.frame(b"\0" * 100, 1)],
        INVALID,
        "a RAW RGB24 64x48 frame with rows of 192 bytes is 9216 bytes, the sample has 100",
    ),
    (lambda s: [s.descriptor(stride=10)], INVALID, "stride_bytes 10 is less than a row of 64 RGB24 pixels (192 bytes)"),
    (
        lambda s: [s.descriptor(encoding="PNG"), s.frame(b"not a png", 1)],
        INVALID,
        "the sample is not a PNG image: cannot identify image file <_io.BytesIO object at",
    ),
    (
        lambda s: [s.descriptor({"servable": "nosuch", "method": "m"})],
        grpc.StatusCode.NOT_FOUND,
        "Request servable(nosuch) method(m) , servable is not available: servable 'nosuch' is not served; served: "
        "add, frame_probe, frames",
    ),
    (
        lambda s: [s.descriptor({"servable": "add", "method": "add_common"})],
        INVALID,
        "method add_common of servable add takes 2 inputs (x1, x2); a media stream feeds one, the frame",
    ),
    (
        lambda s: [s.descriptor({"servable": "frames", "method": "intensity", "batch": 2})],
        INVALID,
        "extension_configuration has the unknown key 'batch': it takes servable, method, version, batch_size",
    ),
    (
        lambda s: [s.descriptor({"servable": "frames", "method": "intensity", "batch_size": 0})],
        INVALID,
        "extension_configuration 'batch_size' should be an integer 1 to 64, got 0",
    ),
    (lambda s: [s.descriptor(), s.message(sequence_number=9)], INVALID, "message sequence_number 9, expected 2"),
    (
        lambda s: [
            s.descriptor({"servable": "frames", "method": "digit"}, width=60, height=48),
            s.frame(solid(0, 60).tobytes(), 1),
        ],
        INVALID,
        "Call Function 'frames.digit_row' Failed, method: 'digit', stage index(begin with 1): 1, error msg: frame of "
        "60x48: digit reads frames whose sides are multiples of 8",
    ),
]


@pytest.mark.parametrize("messages_of, code, details", BAD_STREAMS, ids=[d[:40] for _, _, d in BAD_STREAMS])
def test_each_bad_stream_ends_alone_with_a_clear_status(ava, contract, messages_of, code, details):
    session = Session(contract, ava.address)
    got_code, got_details, _ = session.fails(messages_of(session))
    assert got_code == code
    assert got_details.startswith(details) if "BytesIO" in details else got_details == details
    # other streams and unary calls go on
    good = Session(contract, ava.address)
    assert len(good.run([good.descriptor(), good.frame(solid(0).tobytes(), 1)])) == 2
    one = np.ones((2, 2), np.float32)
    assert Client(ava.address, "add", "add_common").infer({"x1": one, "x2": one})[0]["y"].tolist() == [[2, 2], [2, 2]]


def test_a_stream_that_names_nothing_on_a_server_without_default(ava, contract):
    session = Session(contract, ava.guarded, metadata=(("x-ms-authentication", _basic("camera", "s3cret")),))
    code, details, _ = session.fails([session.descriptor()])
    assert (code, details) == (
        INVALID,
        "the stream names no servable and no method: set extension_configuration to "
        '{"servable": ..., "method": ...}, or give the server a default (ava: in '
        "serving.yaml)",
    )


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_credentials_in_x_ms_authentication(ava, contract):
    config = {"servable": "frames", "method": "intensity"}
    refused = Session(contract, ava.guarded)
    code, _, _ = refused.fails([refused.descriptor(config)])
    assert code == grpc.StatusCode.UNAUTHENTICATED
    wrong = Session(contract, ava.guarded, metadata=(("x-ms-authentication", _basic("camera", "nope")),))
    assert wrong.fails([wrong.descriptor(config)])[0] == grpc.StatusCode.UNAUTHENTICATED
    admitted = Session(contract, ava.guarded, metadata=(("x-ms-authentication", _basic("camera", "s3cret")),))
    replies = admitted.run([admitted.descriptor(config), admitted.frame(solid(255).tobytes(), 1)])
    assert tags(replies[1]) == [("light", 1.0)]


def _shm_case(ava, contract, name, length, messages, details):
    session = Session(contract, ava.address)
    code, got, _ = session.fails([session.descriptor(shm=(name, length))] + messages(session))
    assert (code, got) == (INVALID, details)


def test_bad_shared_memory_regions_and_references(ava, contract, region):
    name, path = region
    size = solid(0).nbytes
    no_such = (
        "the shared memory region named by handle_name cannot be opened: it must be a regular file in "
        "/dev/shm that the server may read"
    )
    _shm_case(ava, contract, name, size, lambda s: [], no_such)
    os.mkfifo(path)
    _shm_case(
        ava, contract, name, size, lambda s: [], "the shared memory region named by handle_name is not a regular file"
    )
    os.unlink(path)
    elsewhere = os.path.join(os.path.dirname(path), f"{name}-target")
    with open(elsewhere, "wb") as f:
        f.write(b"\0" * size)
    try:
        os.symlink(elsewhere, path)  # a link is never followed
        _shm_case(ava, contract, name, size, lambda s: [], no_such)
    finally:
        os.unlink(elsewhere)
        os.unlink(path)
    with open(path, "wb") as f:
        f.write(b"\0" * size)
    _shm_case(
        ava,
        contract,
        name,
        size * 2,
        lambda s: [],
        f"the shared memory region is {size} bytes, less than its length_bytes {size * 2}",
    )
    _shm_case(
        ava,
        contract,
        "../etc/passwd",
        size,
        lambda s: [],
        "the shared memory handle_name must name a file directly in /dev/shm",
    )
    _shm_case(
        ava,
        contract,
        name,
        size,
        lambda s: [s.reference(1, size, 1)],
        f"content_reference [1, 1 + {size}) reaches outside the shared memory region of {size} bytes",
    )
    _shm_case(
        ava,
        contract,
        name,
        size,
        lambda s: [s.reference(2**64 - 1, size, 1)],
        f"content_reference [{2**64 - 1}, {2**64 - 1} + {size}) reaches outside the shared memory region "
        f"of {size} bytes",
    )
    _shm_case(
        ava,
        contract,
        name,
        size,
        lambda s: [s.frame(b"x", 1)],
        "the stream sends its frames through shared memory: a sample needs content_reference",
    )
    # a file the client cuts short after the stream opened it: a clear error, the server unharmed
    session = Session(contract, ava.address)
    opened = threading.Event()

    def cut_then_refer():
        yield session.descriptor(shm=(name, size))
        opened.wait(30)
        os.truncate(path, 10)
        yield session.reference(0, size, 1)

    with session.channel, pytest.raises(grpc.RpcError) as ended:
        for reply in session.stub.ProcessMediaStream(cut_then_refer(), timeout=60):
            opened.set()  # the server's descriptor: it has opened the region
    assert (ended.value.code(), ended.value.details()) == (
        INVALID,
        f"the shared memory region ends before byte {size}: the client cut its file short",
    )


def _open_files(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return found


def test_a_client_that_leaves_mid_stream_leaves_nothing_open(ava, contract, region):
    name, path = region
    size = solid(0).nbytes
    with open(path, "wb") as f:
        f.write(solid(255).tobytes())
    session = Session(contract, ava.address)
    messages = [
        session.descriptor({"servable": "frames", "method": "intensity", "batch_size": 4}, shm=(name, size)),
        session.reference(0, size, 1),
        session.reference(0, size, 2),
    ]
    left = threading.Event()

    def keep_open():
        yield from messages
        left.wait(30)  # the client sends nothing more, and does not half-close

    call = session.stub.ProcessMediaStream(keep_open(), timeout=60)
    replies = iter(call)
    assert next(replies).WhichOneof("payload") == "media_stream_descriptor"
    assert next(replies).ack_sequence_number == 2
    wait_until(lambda: path in _open_files(ava.proc.pid), "the server to open the region", 10)
    call.cancel()  # the client goes away with two frames of its batch pending
    left.set()
    session.channel.close()
    wait_until(lambda: path not in _open_files(ava.proc.pid), "the server to close the region", 10)
    assert os.path.exists(path)


def test_frames_of_many_streams_batch_together_in_the_worker(ava, contract):
    """While the worker is held, three streams each send a frame; released, it takes them as one batch: the batch
    stage sees three instances."""
    hold, started = ava.probe_dir / "hold", ava.probe_dir / "started"
    hold.write_text("")
    blocker = Session(contract, ava.address)
    results: dict = {}

    def stream(key, method):
        session = Session(contract, ava.address)
        results[key] = session.run(
            [session.descriptor({"servable": "frame_probe", "method": method}), session.frame(solid(1).tobytes(), 1)]
        )

    threads = [threading.Thread(target=stream, args=("blocker", "held"))]
    try:
        threads[0].start()
        wait_until(lambda: started.exists(), "the worker to be held", 30)
        threads += [threading.Thread(target=stream, args=(k, "batch_size")) for k in range(3)]
        for thread in threads[1:]:
            thread.start()
        # the three frames are queued behind the held one (each stream's reply is pending)
        wait_until(lambda: pending(ava.metrics, "frame_probe") == 4, "four frames pending", 30)
    finally:
        hold.unlink()
        for thread in threads:
            thread.join(60)
        if started.exists():
            started.unlink()
    blocker.channel.close()
    assert tags(results["blocker"][1]) == [("held", 1.0)]
    assert [tags(results[k][1]) for k in range(3)] == [[("3", 1.0)]] * 3
