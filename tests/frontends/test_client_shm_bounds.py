"""Client shared memory under attack (issue 22): one rule for every form (Triton's regions, MindSpore's shm_data,
media-stream frames): off unless the server allows it, and then only files of the server's user or of the owners
the operator lists; every read bounded before it starts by what the tensor or frame uses and by max_msg_mb_size,
large reads off the event loop (the master's peak RSS measured, ServerLive timed while they run); region names at
most 255 bytes. Each repro of the issue is a test, and the other doors still answer afterwards."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Optional

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from mindserve._proto import ms_service_pb2 as ms
from support import servables
from support.messages import grpc_inference as oip
from support.messages import media_graph as media
from support.paths import BUNDLED_SERVABLES
from support.processes import free_addresses, start_server

pytestmark = pytest.mark.server

PROBE_CONFIG = """
import numpy as np
from mindserve.server import register


def describe(frame):
    h, w, _ = frame.shape
    first, last = frame[0, 0], frame[h - 1, w - 1]
    return f"{h}x{w} {first[0]},{first[1]},{first[2]} {last[0]},{last[1]},{last[2]}", np.float32(0.25)


def sum_of(x):
    return np.float64(x.sum(dtype=np.float64))


@register.register_method(output_names=["label", "confidence"])
def probe(frame):
    return register.add_stage(describe, frame, outputs_count=2)


@register.register_method(output_names=["y"])
def total(x):
    return register.add_stage(sum_of, x, outputs_count=1)
"""
LISTED = 65534  # "nobody": the owner the server lists by name
UNLISTED = 12345
MAX_READ = 100 << 20  # the servers' max_msg_mb_size (the default, 100)
DISABLED = (
    "client shared memory is disabled: start the server with allow_client_shm=True to use it "
    "(allow_client_shm: true in serving.yaml, or MINDSERVE_ALLOW_CLIENT_SHM=true)"
)
BAD_KEY = (
    "the key names no shared memory the server may use: an shm_open name of a regular file in /dev/shm "
    "owned by the server's user or by an owner listed in client_shm_owners"
)
NOT_OWNED = (
    "the shared memory region named by handle_name is owned by a user the server does not take files of: "
    "its own, or one listed in client_shm_owners"
)
PROCESS_MEDIA_STREAM = f"/{media.SERVICE_NAME}/ProcessMediaStream"
GROWTH_LIMIT_KB = 64 << 10  # what a refused or row-read request may add to the master's peak RSS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("shm_bounds")
    servables.write(str(root / "servables"), "shmprobe", PROBE_CONFIG)
    address, closed = free_addresses(2)
    process = start_server(
        root,
        f"""
        server.context.set_client_shm_owners(["nobody"])
        server.start_servables([server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0),
                                server.ServableStartConfig({str(root / "servables")!r}, "shmprobe", device_ids=0,
                                                           shm_size_mb=512)])
        server.start_grpc_server({address!r}, allow_client_shm=True)
        server.start_grpc_server({closed!r})
    """,
        address,
    )
    process.closed = closed
    yield process
    process.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        yield ch


@pytest.fixture
def files():
    """Client files in /dev/shm, made by the test and removed after it (the server never removes them)."""
    made = []

    def make(size: int, owner: Optional[int] = None) -> tuple[str, str]:
        name = f"shm-bounds-{uuid.uuid4().hex}"
        path = f"/dev/shm/{name}"
        with open(path, "wb"):
            pass
        os.truncate(path, size)  # sparse: costs no memory until written
        if owner is not None:
            os.chown(path, owner, owner)
        made.append(path)
        return name, path

    yield make
    for path in made:
        if os.path.lexists(path):
            os.unlink(path)


def peak_reset(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # VmHWM back to the current RSS


def peak_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])


class LiveProbe:
    """ServerLive asked again and again on its own channel while the test's work runs: the slowest answer."""

    def __init__(self, address: str):
        self._channel = grpc.insecure_channel(address)
        self._live = self._channel.unary_unary(
            "/inference.GRPCInferenceService/ServerLive",
            request_serializer=oip.ServerLiveRequest.SerializeToString,
            response_deserializer=oip.ServerLiveResponse.FromString,
        )
        self._stop = threading.Event()
        self.slowest, self.count = 0.0, 0
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                live = self._live(oip.ServerLiveRequest(), timeout=30).live
            except grpc.RpcError as exc:
                self.error = exc
                return
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.count += live
            self._stop.wait(0.01)

    def __enter__(self) -> "LiveProbe":
        self._live(oip.ServerLiveRequest(), timeout=30)  # the channel is connected before the timing starts
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)
        self._channel.close()


# ---- media streams ----


def media_messages(
    name: Optional[str], length: int, width: int, height: int, stride: int, references, method: str = "probe"
) -> list:
    fmt = media.VideoFrameSampleFormat
    descriptor = {
        "media_descriptor": {
            "timescale": 90000,
            "video_frame_sample_format": {
                "encoding": fmt.RAW,
                "pixel_format": fmt.RGB24,
                "dimensions": {"width": width, "height": height},
                "stride_bytes": stride,
            },
        },
        "extension_configuration": f'{{"servable": "shmprobe", "method": "{method}"}}',
    }
    if name is not None:
        descriptor["shared_memory_buffer_transfer_properties"] = {"handle_name": name, "length_bytes": length}
    messages = [media.MediaStreamMessage(sequence_number=1, media_stream_descriptor=descriptor)]
    for k, (offset, size) in enumerate(references):
        messages.append(
            media.MediaStreamMessage(
                sequence_number=k + 2,
                media_sample={"timestamp": k, "content_reference": {"address_offset": offset, "length_bytes": size}},
            )
        )
    return messages


def stream(address: str, messages: list) -> tuple[list, Optional[grpc.RpcError]]:
    """The replies of a media stream, and the status that ended it (None: OK)."""
    got = []
    with grpc.insecure_channel(address) as ch:
        call = ch.stream_stream(
            PROCESS_MEDIA_STREAM,
            request_serializer=media.MediaStreamMessage.SerializeToString,
            response_deserializer=media.MediaStreamMessage.FromString,
        )
        try:
            for reply in call(iter(messages), timeout=60):
                got.append(reply)
        except grpc.RpcError as ended:
            return got, ended
    return got, None


def labels(replies: list) -> list[str]:
    return [i.classification.tag.value for r in replies[1:] for i in r.media_sample.inferences]


def open_files(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return found


def test_media_stream_shared_memory_is_off_unless_the_server_allows_it(server, files):
    name, path = files(64 * 48 * 3)
    replies, ended = stream(server.closed, media_messages(name, 64 * 48 * 3, 64, 48, 0, [(0, 64 * 48 * 3)]))
    assert ended is not None, replies
    assert replies == [] and (ended.code(), ended.details()) == (grpc.StatusCode.UNAVAILABLE, DISABLED)
    assert path not in open_files(server.proc.pid)
    # the same stream on the server that allows it: the frame is read
    replies, ended = stream(server.address, media_messages(name, 64 * 48 * 3, 64, 48, 0, [(0, 64 * 48 * 3)]))
    assert ended is None and labels(replies) == ["48x64 0,0,0 0,0,0"]


def test_files_of_the_servers_user_and_of_listed_owners_only(server, files):
    """Every form takes the server's own files and those of the owners listed ("nobody"), no other (as root,
    the test makes files of other users; the media stream is the form that took any owner before)."""
    size = 64 * 48 * 3
    for owner in (None, LISTED) if os.geteuid() == 0 else (None,):
        name, _ = files(size, owner)
        replies, ended = stream(server.address, media_messages(name, size, 64, 48, 0, [(0, size)]))
        assert ended is None and labels(replies) == ["48x64 0,0,0 0,0,0"], owner
        triton = triton_grpc.InferenceServerClient(server.address)
        triton.register_system_shared_memory(f"owned-{owner}", f"/{name}", size)
        triton.unregister_system_shared_memory(f"owned-{owner}")
    if os.geteuid() != 0:
        return
    name, path = files(size, UNLISTED)
    replies, ended = stream(server.address, media_messages(name, size, 64, 48, 0, [(0, size)]))
    assert ended is not None, replies
    assert replies == [] and (ended.code(), ended.details()) == (grpc.StatusCode.INVALID_ARGUMENT, NOT_OWNED)
    with pytest.raises(InferenceServerException) as refused:
        triton_grpc.InferenceServerClient(server.address).register_system_shared_memory("other", f"/{name}", size)
    assert BAD_KEY in refused.value.message() and name not in refused.value.message()
    reply = predict(server.address, ms_request(name, [[16]], data_size=16, bytes_size=size))
    assert [e.error_msg.decode() for e in reply.error_msg] == [BAD_KEY]
    assert path not in open_files(server.proc.pid)


def test_a_raw_frame_reads_its_rows_never_its_stride_gaps(server, files):
    """The issue's repro: a 1-pixel-wide RAW frame with a 1,000,000-byte stride over a sparse 3 GB file. The
    master read all 3 GB (ServerLive stalled 5.5 s); now it reads the 3000 rows of 3 bytes."""
    height, stride = 3000, 1_000_000
    name, path = files(height * stride)
    with open(path, "r+b") as f:
        os.pwrite(f.fileno(), b"\x01\x02\x03", 0)
        os.pwrite(f.fileno(), b"\x07\x08\x09", (height - 1) * stride)
    pid = server.proc.pid
    peak_reset(pid)
    before = peak_kb(pid)
    with LiveProbe(server.address) as live:
        replies, ended = stream(
            server.address, media_messages(name, height * stride, 1, height, stride, [(0, height * stride)] * 3)
        )
    assert ended is None and labels(replies) == ["3000x1 1,2,3 7,8,9"] * 3
    assert peak_kb(pid) - before < GROWTH_LIMIT_KB
    assert live.error is None and live.count > 0 and live.slowest < 1.0


def test_large_frames_are_read_off_the_loop_and_bounded_by_max_msg_mb_size(server, files):
    # 1024 x 1024 RGB24 rows padded to 3200 bytes: 3 MB read on a thread, decoded there, answered in order
    width, height, stride = 1024, 1024, 3200
    name, path = files(2 * height * stride)
    frame = np.zeros((height, stride), np.uint8)
    frame[0, :3], frame[-1, (width - 1) * 3 : width * 3] = (9, 8, 7), (4, 5, 6)
    frame[:, width * 3 :] = 255  # the padding is never read: it would not show anyway, but it must not count
    with open(path, "r+b") as f:
        os.pwrite(f.fileno(), frame.tobytes(), height * stride)
    replies, ended = stream(
        server.address,
        media_messages(
            name, 2 * height * stride, width, height, stride, [(height * stride, height * stride), (0, height * stride)]
        ),
    )
    assert ended is None and labels(replies) == ["1024x1024 9,8,7 4,5,6", "1024x1024 0,0,0 0,0,0"]
    # a frame whose rows are more than a message may carry (100 MB): refused before anything is read
    width = 8192
    height = MAX_READ // (width * 3) + 1  # rows of 3-byte pixels: just past 100 MB
    name, _ = files(width * 3 * height)
    replies, ended = stream(
        server.address, media_messages(name, width * 3 * height, width, height, 0, [(0, width * 3 * height)])
    )
    assert ended is not None, replies
    assert len(replies) == 1 and (ended.code(), ended.details()) == (
        grpc.StatusCode.OUT_OF_RANGE,
        f"a frame of {width * 3 * height} bytes in shared memory is more than the "
        f"{MAX_READ} a message may carry on this server (max_msg_mb_size)",
    )
    assert name not in ended.details()


# ---- Triton's regions ----


def region_input(name: str, shape: list, datatype: str, region: str, size: int, offset: int = 0):
    tensor = triton_grpc.InferInput(name, shape, datatype)
    tensor.set_shared_memory(region, size, offset=offset)
    return tensor


def test_a_huge_declared_region_input_is_refused_before_it_is_read(server, files):
    """The issue's repro: a [1, 20000, 17895, 3] input read 1 GiB into the master before the worker refused it
    (three at once: 1.1 -> 4.2 GB). Now the request is refused before a byte is read: over max_msg_mb_size."""
    shape = [1, 20000, 17895, 3]
    size = 20000 * 17895 * 3
    name, _ = files(size)
    triton = triton_grpc.InferenceServerClient(server.address)
    triton.register_system_shared_memory("huge", f"/{name}", size)
    expected = (
        f"input x1: {size} bytes in shared memory would bring the request to {size} bytes, more than the "
        f"{MAX_READ} a request may carry on this server (max_msg_mb_size)"
    )
    pid = server.proc.pid
    peak_reset(pid)
    before = peak_kb(pid)
    errors: list = []

    def call() -> None:
        client = triton_grpc.InferenceServerClient(server.address)
        try:
            client.infer("add.add_common", [region_input(n, shape, "UINT8", "huge", size) for n in ("x1", "x2")])
        except InferenceServerException as exc:
            errors.append((exc.status(), exc.message()))

    calls = [threading.Thread(target=call) for _ in range(3)]
    for thread in calls:
        thread.start()
    for thread in calls:
        thread.join(60)
    assert errors == [("StatusCode.INVALID_ARGUMENT", expected)] * 3
    assert peak_kb(pid) - before < GROWTH_LIMIT_KB
    # a declared byte size other than the tensor's is refused before the read too (the tensor's size is checked)
    with pytest.raises(InferenceServerException) as refused:
        triton.infer("add.add_common", [region_input(n, [1, 2, 2], "FP32", "huge", 15) for n in ("x1", "x2")])
    assert refused.value.message() == (
        "Instances input x1 check failed, detail: Tensor check failed: input data "
        "size 15 invalid, shape [1, 2, 2] of kMSI_Float32 needs 16 bytes"
    )
    triton.unregister_system_shared_memory("huge")


def test_the_inputs_of_one_request_read_at_most_max_msg_mb_size_in_all(server, files):
    rows = 15 << 20  # two FP32 inputs of 60 MB: each within the bound, together past it
    name, _ = files(2 * rows * 4)
    triton = triton_grpc.InferenceServerClient(server.address)
    triton.register_system_shared_memory("two", f"/{name}", 2 * rows * 4)
    try:
        with pytest.raises(InferenceServerException) as refused:
            triton.infer(
                "add.add_common",
                [region_input(n, [1, rows], "FP32", "two", rows * 4, k * rows * 4) for k, n in enumerate(("x1", "x2"))],
            )
        assert refused.value.message() == (
            f"input x2: {rows * 4} bytes in shared memory would bring the request to {2 * rows * 4} bytes, more than "
            f"the {MAX_READ} a request may carry on this server (max_msg_mb_size)"
        )
    finally:
        triton.unregister_system_shared_memory("two")


def test_server_live_answers_while_large_region_inputs_are_read(server, files):
    """64 MB inputs read from a region (on the master's own threads) while ServerLive is asked every 10 ms."""
    side = 4096
    name, path = files(side * side * 4)
    with open(path, "r+b") as f:
        os.pwrite(f.fileno(), np.full(side * side, 0.5, np.float32).tobytes(), 0)
    triton = triton_grpc.InferenceServerClient(server.address)
    triton.register_system_shared_memory("big", f"/{name}", side * side * 4)
    results = []
    try:
        with LiveProbe(server.address) as live:
            for _ in range(4):
                result = triton.infer(
                    "shmprobe.total", [region_input("x", [1, side, side], "FP32", "big", side * side * 4)]
                )
                results.append(result.as_numpy("y").tolist())
    finally:
        triton.unregister_system_shared_memory("big")
    assert results == [[side * side * 0.5]] * 4
    assert live.error is None and live.count > 0 and live.slowest < 1.0


def test_region_names_are_at_most_255_bytes(server, files):
    name, _ = files(64)
    triton = triton_grpc.InferenceServerClient(server.address)
    for long_name, length in (("n" * 256, 256), ("\u00e9" * 128, 256), ("x" * (10 << 20), 10 << 20)):
        with pytest.raises(InferenceServerException) as refused:
            triton.register_system_shared_memory(long_name, f"/{name}", 64)
        assert (refused.value.status(), refused.value.message()) == (
            "StatusCode.INVALID_ARGUMENT",
            f"a shared memory region's name is at most 255 bytes, this one is {length}",
        )
    triton.register_system_shared_memory("n" * 255, f"/{name}", 64)
    assert list(triton.get_system_shared_memory_status().regions) == ["n" * 255]
    triton.unregister_system_shared_memory()
    with pytest.raises(InferenceServerException) as refused:  # a key is a file name: at most 255 bytes too
        triton.register_system_shared_memory("k", "/" + "k" * 256, 64)
    assert BAD_KEY in refused.value.message()
    assert len(triton.get_system_shared_memory_status().regions) == 0


# ---- MindSpore's shm_data ----


def predict(address: str, request: ms.PredictRequest) -> ms.PredictReply:
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_unary(
            "/mindspore.serving.proto.MSService/Predict",
            request_serializer=ms.PredictRequest.SerializeToString,
            response_deserializer=ms.PredictReply.FromString,
        )
        return call(request, timeout=60)


def ms_request(name: str, dims_of_instances: list, data_size: int, bytes_size: int) -> ms.PredictRequest:
    """add.add_common with x1 of each instance in the client's memory ``name`` (uint8 of the dims given)."""
    request = ms.PredictRequest(servable_spec=ms.ServableSpec(name="add", method_name="add_common"))
    for dims in dims_of_instances:
        instance = request.instances.add()
        x1 = instance.items["x1"]
        x1.dtype, x1.shape.dims[:] = ms.MS_UINT8, dims
        x1.shm_data.CopyFrom(
            ms.ShmTensorData(memory_key=f"/{name}", bytes_size=bytes_size, data_offset=0, data_size=data_size)
        )
        x2 = instance.items["x2"]
        x2.dtype, x2.shape.dims[:], x2.data = ms.MS_FLOAT32, [2, 2], np.ones((2, 2), np.float32).tobytes()
    return request


def test_shm_data_of_a_gibibyte_is_refused_before_it_is_read(server, files):
    """The issue's repro: MindSpore shm_data 2 x 1 GiB peaked the master at 2.1 GB."""
    size = 1 << 30
    name, _ = files(size)
    pid = server.proc.pid
    peak_reset(pid)
    before = peak_kb(pid)
    reply = predict(server.address, ms_request(name, [[size], [size]], data_size=size, bytes_size=size))
    refused = (
        f"input x1: {size} bytes in shared memory would bring the request to {size} bytes, more than the "
        f"{MAX_READ} a request may carry on this server (max_msg_mb_size)"
    )
    assert [e.error_msg.decode() for e in reply.error_msg] == [refused]
    assert peak_kb(pid) - before < GROWTH_LIMIT_KB
    # the other doors still answer
    ok = ms.PredictRequest(servable_spec=ms.ServableSpec(name="add", method_name="add_common"))
    instance = ok.instances.add()
    for key in ("x1", "x2"):
        tensor = instance.items[key]
        tensor.dtype, tensor.shape.dims[:], tensor.data = ms.MS_FLOAT32, [2, 2], np.ones((2, 2), np.float32).tobytes()
    reply = predict(server.address, ok)
    assert not reply.error_msg
    np.testing.assert_array_equal(np.frombuffer(reply.instances[0].items["y"].data, np.float32), [2.0] * 4)
    live = triton_grpc.InferenceServerClient(server.address)
    assert live.is_server_live() and live.is_server_ready()
