"""Frames per second through the video-analytics media stream, embedded vs shared memory, against the same frames
as unary ModelInfer calls: 640x480 RGB24 RAW frames, 4 concurrent streams (or callers) to frames.intensity, in
turns, several rounds, in one run against one server (two workers) on a unix socket.

    python benchmarks/media_stream.py [--rounds R] [--seconds S] [--window W]

Each stream keeps up to W frames unacknowledged (its shared memory file holds W frame slots, reused once
acknowledged). Prints frames/s per mode per round, the sums, and the ratios.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import grpc
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH, HEIGHT = 640, 480
STREAMS = 4
SERVER = '''
from mindserve import server
server.start_servables(server.ServableStartConfig({servables!r}, "frames", device_ids=(0, 1)))
server.start_grpc_server({address!r}, max_msg_mb_size=16, allow_client_shm=True)
print("listening", flush=True)
'''


def frame(k: int) -> np.ndarray:
    return np.full((HEIGHT, WIDTH, 3), 40 + (k * 37) % 180, np.uint8)


async def stream(address: str, seconds: float, window: int, shm: bool) -> int:
    """Frames answered on one stream in ``seconds``."""
    from mindserve._proto import media_graph as pb

    size = WIDTH * HEIGHT * 3
    name, path = f"bench-{uuid.uuid4().hex}", None
    if shm:
        path = os.path.join("/dev/shm", name)
        with open(path, "wb") as f:
            for k in range(window):
                f.write(frame(k).tobytes())
    frames = [frame(k).tobytes() for k in range(window)]
    descriptor = {"extension_configuration": json.dumps({"servable": "frames", "method": "intensity"}),
                  "media_descriptor": {"timescale": 90000, "video_frame_sample_format": {
                      "encoding": pb.VideoFrameSampleFormat.RAW, "pixel_format": pb.VideoFrameSampleFormat.RGB24,
                      "dimensions": {"width": WIDTH, "height": HEIGHT}}}}
    if shm:
        descriptor["shared_memory_buffer_transfer_properties"] = {"handle_name": name, "length_bytes": size * window}
    try:
        async with grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", 16 << 20),
                                                               ("grpc.max_send_message_length", 16 << 20)]) as ch:
            call = ch.stream_stream(f"/{pb.SERVICE_NAME}/ProcessMediaStream",
                                    request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=pb.MediaStreamMessage.FromString)()
            await call.write(pb.MediaStreamMessage(sequence_number=1, media_stream_descriptor=descriptor))
            await call.read()
            slots = asyncio.Semaphore(window)
            deadline = time.monotonic() + seconds
            done = 0
            sent = 1

            async def write() -> None:
                nonlocal sent
                while time.monotonic() < deadline:
                    await slots.acquire()
                    k = (sent - 1) % window
                    sample = {"timestamp": sent,
                              **({"content_reference": {"address_offset": k * size, "length_bytes": size}} if shm
                                 else {"content_bytes": {"bytes": frames[k]}})}
                    sent += 1
                    await call.write(pb.MediaStreamMessage(sequence_number=sent, media_sample=sample))
                await call.done_writing()

            writer = asyncio.ensure_future(write())
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    break
                done += 1
                slots.release()
            await writer
            return done
    finally:
        if path is not None:
            os.unlink(path)


async def unary(address: str, seconds: float) -> int:
    from mindserve._proto import grpc_inference as oip

    request = oip.ModelInferRequest(model_name="frames.intensity")
    request.inputs.add(name="frame", datatype="UINT8", shape=[1, HEIGHT, WIDTH, 3])
    request.raw_input_contents.append(frame(1).tobytes())
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 16 << 20)]) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                              request_serializer=oip.ModelInferRequest.SerializeToString,
                              response_deserializer=oip.ModelInferResponse.FromString)
        deadline = time.monotonic() + seconds
        done = 0
        while time.monotonic() < deadline:
            await call(request, timeout=30)
            done += 1
        return done


async def measure(mode: str, address: str, seconds: float, window: int) -> float:
    started = time.monotonic()
    if mode == "unary":
        counts = await asyncio.gather(*(unary(address, seconds) for _ in range(STREAMS)))
    else:
        counts = await asyncio.gather(*(stream(address, seconds, window, mode == "shm") for _ in range(STREAMS)))
    return sum(counts) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--window", type=int, default=4)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="media_bench_")
    address = f"unix:{tmp}/grpc.sock"
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(servables=os.path.join(ROOT, "servables"),
                                                                   address=address)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        modes = ("embedded", "shm", "unary")
        sums = dict.fromkeys(modes, 0.0)
        asyncio.run(measure("embedded", address, 1.0, args.window))  # warm
        for round_ in range(args.rounds):
            for mode in (modes if round_ % 2 == 0 else tuple(reversed(modes))):
                fps = asyncio.run(measure(mode, address, args.seconds, args.window))
                sums[mode] += fps
                print(f"round {round_ + 1} {mode:8} {fps:8.1f} frames/s", flush=True)
        for mode in modes:
            print(f"sum {mode:8} {sums[mode]:8.1f}")
        print(f"shm / embedded {sums['shm'] / sums['embedded']:.2f}   embedded / unary "
              f"{sums['embedded'] / sums['unary']:.2f}   shm / unary {sums['shm'] / sums['unary']:.2f}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
