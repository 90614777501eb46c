"""ServerLive latency while hostile clients send the largest requests the server takes (and some it refuses).

    .venv/bin/python benchmarks/liveness_under_attack.py [--seconds S] [--attackers N]

Serves the bundled ``add`` servable on a loopback port, then measures ServerLive (no worker involved: it answers
from the master's event loop) for S seconds with no other load, and again for S seconds while N threads each loop
over three hostile requests: an MSService Predict of 10000 instances of empty tensors (the most instances a
request may carry, parsed the protobuf way), one of 300,000 (refused from its count), and an Open Inference
Protocol ModelInfer of shape [10000, 0]. Prints p50 / p99 / max of ServerLive in both phases, and how many
hostile requests were answered. Target (issue 16): p99 under 50 ms under attack.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import grpc
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from processes import free_port  # noqa: E402

from mindserve._frontends.grpc.wire_write import varint  # noqa: E402
from mindserve._proto import grpc_inference as oip  # noqa: E402
from mindserve._proto import ms_service_pb2 as pb  # noqa: E402

SERVER = """
from mindserve import server
server.start_servables(server.ServableStartConfig({servables!r}, "add", device_ids=0))
server.start_grpc_server({address!r}, max_msg_mb_size=512)
print("READY", flush=True)
"""


def _predict_of(count: int) -> bytes:
    spec = pb.ServableSpec(name="add", method_name="add_common").SerializeToString()
    tensor = pb.Tensor(shape=pb.TensorShape(dims=[0]), dtype=pb.MS_FLOAT32)
    one = pb.Instance(items={"x1": tensor, "x2": tensor}).SerializeToString()
    return b"\x0a" + varint(len(spec)) + spec + (b"\x12" + varint(len(one)) + one) * count


def _model_infer_of(count: int) -> bytes:
    request = oip.ModelInferRequest(model_name="add.add_common")
    for name in ("x1", "x2"):
        request.inputs.add(name=name, datatype="FP32", shape=[count, 0])
        request.raw_input_contents.append(b"")
    return request.SerializeToString()


def _live_latencies(channel: grpc.Channel, seconds: float) -> list[float]:
    live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
    request = oip.ServerLiveRequest().SerializeToString()
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        live(request, timeout=30)
        out.append(time.perf_counter() - start)
        time.sleep(0.005)
    return out


def _attack(address: str, stop: threading.Event, answered: list) -> None:
    options = [("grpc.max_send_message_length", 512 << 20), ("grpc.max_receive_message_length", 512 << 20)]
    with grpc.insecure_channel(address, options=options) as channel:
        predict = channel.unary_unary("/mindspore.serving.proto.MSService/Predict")
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        requests = [(predict, _predict_of(10000)), (predict, _predict_of(300_000)), (infer, _model_infer_of(10000))]
        while not stop.is_set():
            for call, data in requests:
                try:
                    call(data, timeout=60)
                except grpc.RpcError:
                    pass
                answered.append(1)


def _summary(name: str, latencies: list[float]) -> str:
    ms = np.array(latencies) * 1000
    return (f"{name}: {len(ms)} calls, p50 {np.percentile(ms, 50):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms, "
            f"max {ms.max():.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--attackers", type=int, default=2)
    args = parser.parse_args()
    address = f"127.0.0.1:{free_port()}"
    script = SERVER.format(servables=os.path.join(REPO, "servables"), address=address)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "READY":
            raise SystemExit("the server did not start")
        with grpc.insecure_channel(address) as channel:
            quiet = _live_latencies(channel, args.seconds)
            stop = threading.Event()
            answered: list = []
            attackers = [threading.Thread(target=_attack, args=(address, stop, answered))
                         for _ in range(args.attackers)]
            for thread in attackers:
                thread.start()
            time.sleep(1.0)  # let the attack reach its stride
            loaded = _live_latencies(channel, args.seconds)
            stop.set()
            for thread in attackers:
                thread.join()
        print(_summary("ServerLive, quiet", quiet))
        print(_summary(f"ServerLive, {args.attackers} hostile clients", loaded))
        print(f"hostile requests answered: {len(answered)}")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
