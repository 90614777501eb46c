"""Stream video frames to the frames servable as a video-analytics module does (MediaGraphExtension /
ProcessMediaStream), with classes generated from the public contract (mindserve/_proto/media_graph.proto,
compiled here with grpc_tools), and print each reply.

    python example/media_stream/serving_client.py [ADDRESS] [--shared-memory] [--method intensity|digit]
                                                  [--batch-size N]

Frames: for ``intensity``, six 640x480 RGB24 frames alternately bright and dark; for ``digit``, the digits test
images (example/digits/test_images/), each scaled to 64x64 RGB. Embedded, each frame travels in its message;
with ``--shared-memory`` the client writes the frames into a file it creates in /dev/shm, names it in its
descriptor, and sends only references (offset, length); it removes the file at the end.
"""
import argparse
import glob
import importlib
import json
import os
import subprocess
import sys
import tempfile
import uuid

import grpc
import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
CONTRACT = os.path.join(HERE, "..", "..", "mindserve", "_proto", "media_graph.proto")
DIGIT_IMAGES = os.path.join(HERE, "..", "digits", "test_images")


def contract():
    """The contract's messages and service stub, generated into a temporary folder."""
    out = tempfile.mkdtemp(prefix="media_graph_")
    folder = os.path.dirname(os.path.abspath(CONTRACT))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{folder}", f"--python_out={out}",
                    f"--grpc_python_out={out}", os.path.abspath(CONTRACT)], check=True)
    sys.path.insert(0, out)
    return importlib.import_module("media_graph_pb2"), importlib.import_module("media_graph_pb2_grpc")


def frames(method: str) -> list:
    """(name, HxWx3 uint8 RGB frame) pairs to stream."""
    if method == "digit":
        found = []
        for path in sorted(glob.glob(os.path.join(DIGIT_IMAGES, "*.png")))[:6]:
            with Image.open(path) as image:
                found.append((os.path.basename(path), np.asarray(image.convert("RGB").resize((64, 64)))))
        return found
    return [(f"{'bright' if i % 2 == 0 else 'dark'} frame {i}", np.full((480, 640, 3), 230 if i % 2 == 0 else 25,
                                                                       np.uint8)) for i in range(6)]


def messages(pb, shots: list, method: str, batch_size: int, region):
    """The client's stream: its descriptor, then one sample per frame, numbered from 1."""
    height, width, _ = shots[0][1].shape
    descriptor = {
        "extension_configuration": json.dumps({"servable": "frames", "method": method, "batch_size": batch_size}),
        "media_descriptor": {"timescale": 90000, "video_frame_sample_format": {
            "encoding": pb.VideoFrameSampleFormat.RAW, "pixel_format": pb.VideoFrameSampleFormat.RGB24,
            "dimensions": {"width": width, "height": height}}}}
    if region is not None:
        descriptor["shared_memory_buffer_transfer_properties"] = {"handle_name": region[0],
                                                                  "length_bytes": region[1]}
    yield pb.MediaStreamMessage(sequence_number=1, media_stream_descriptor=descriptor)
    for i, (_, frame) in enumerate(shots):
        timestamp = i * 3000  # 30 frames per second at a 90 kHz clock
        if region is None:
            sample = {"timestamp": timestamp, "content_bytes": {"bytes": frame.tobytes()}}
        else:
            sample = {"timestamp": timestamp, "content_reference": {"address_offset": i * frame.nbytes,
                                                                    "length_bytes": frame.nbytes}}
        yield pb.MediaStreamMessage(sequence_number=i + 2, media_sample=sample)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("address", nargs="?", default="127.0.0.1:5500")
    parser.add_argument("--shared-memory", action="store_true")
    parser.add_argument("--method", default="intensity", choices=("intensity", "digit"))
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    pb, stubs = contract()
    shots = frames(args.method)
    region, path = None, None
    if args.shared_memory:
        name = f"media-stream-example-{uuid.uuid4().hex}"
        path = os.path.join("/dev/shm", name)
        with open(path, "wb") as f:  # the region is the client's: it creates it, and removes it at the end
            for _, frame in shots:
                f.write(frame.tobytes())
        region = (name, sum(frame.nbytes for _, frame in shots))
    try:
        with grpc.insecure_channel(args.address) as channel:
            stub = stubs.MediaGraphExtensionStub(channel)
            for reply in stub.ProcessMediaStream(messages(pb, shots, args.method, args.batch_size, region),
                                                 timeout=60):
                if reply.WhichOneof("payload") == "media_stream_descriptor":
                    print(f"stream open (server message {reply.sequence_number} acknowledges "
                          f"{reply.ack_sequence_number})")
                    continue
                found = ", ".join(f"{i.classification.tag.value} {i.classification.tag.confidence:.3f}"
                                  for i in reply.media_sample.inferences)
                frame = reply.ack_sequence_number - 2
                name = shots[frame][0] if 0 <= frame < len(shots) else "(the last batch)"
                print(f"ack {reply.ack_sequence_number} t={reply.media_sample.timestamp} {name}: {found or '-'}")
    finally:
        if path is not None:
            os.unlink(path)


if __name__ == "__main__":
    main()
