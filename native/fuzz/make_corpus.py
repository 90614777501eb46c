"""Writes the seed corpus of the fuzz targets (committed in corpus/): a few inputs each that reach the
readers' main paths, from which the fuzzer mutates. Run with the project's venv: python native/fuzz/make_corpus.py
"""
from __future__ import annotations

import os
import struct

import numpy as np

from mindserve._proto import grpc_inference as oip
from mindserve._proto import ms_service_pb2 as pb

HERE = os.path.dirname(os.path.abspath(__file__))


def _predict(instances: list[dict], name: str = "add", method: str = "add_common") -> bytes:
    request = pb.PredictRequest(servable_spec=pb.ServableSpec(name=name, method_name=method, version_number=1))
    for values in instances:
        instance = request.instances.add()
        for key, value in values.items():
            tensor = instance.items[key]
            if isinstance(value, bytes):
                tensor.dtype = pb.MS_BYTES
                tensor.bytes_val.append(value)
            else:
                codes = {np.float32: pb.MS_FLOAT32, np.int64: pb.MS_INT64, np.uint8: pb.MS_UINT8}
                tensor.dtype = codes[value.dtype.type]
                tensor.shape.dims.extend(value.shape)
                tensor.data = value.tobytes()
    return request.SerializeToString()


def predict_wire() -> dict[str, bytes]:
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    return {
        "common_two_inputs": _predict([{"x1": x, "x2": x}] * 3),
        "common_one_input": _predict([{"x": np.arange(3, dtype=np.int64)}] * 2),
        "scalar": _predict([{"x": np.array(7, np.int64)}]),
        "mixed_shapes": _predict([{"x1": x, "x2": x}, {"x1": x[0], "x2": x}]),
        "bytes_input": _predict([{"x": b"hello"}]),
        "spec_only": _predict([]),
        "unknown_fields": b"\x49" + bytes(8) + b"\x38\x05" + _predict([{"x": np.ones(2, np.uint8)}]),
    }


def infer_wire() -> dict[str, bytes]:
    def infer(inputs: list, outputs: tuple = (), **top: str) -> bytes:
        request = oip.ModelInferRequest(model_name="add", **top)
        for name, datatype, shape, data in inputs:
            request.inputs.add(name=name, datatype=datatype, shape=shape)
            request.raw_input_contents.append(data)
        for name in outputs:
            request.outputs.add(name=name)
        return request.SerializeToString()

    x = np.arange(4, dtype=np.float32).tobytes()
    with_parameters = oip.ModelInferRequest.FromString(infer([("x", "FP32", [1, 4], x)]))
    with_parameters.inputs[0].parameters["content_type"].string_param = "str"
    return {
        "two_inputs": infer([("x1", "FP32", [1, 2, 2], x), ("x2", "FP32", [1, 2, 2], x)], ("y",), id="r1",
                            model_version="1"),
        "bytes_input": infer([("s", "BYTES", [1], b"\x02\x00\x00\x00hi")]),
        "many_dims": infer([("x", "FP32", [1] * 8, x[:4])]),
        "parameters": with_parameters.SerializeToString(),
    }


def channel() -> dict[str, bytes]:
    def steps(*ops: bytes) -> bytes:
        return b"".join(ops)

    alloc = lambda size, weight=1: bytes([1]) + struct.pack("<HB", size, weight)  # noqa: E731
    scribble = lambda at, data: bytes([0]) + struct.pack("<HB", at, len(data)) + data  # noqa: E731
    return {
        "alloc_release": steps(alloc(100), alloc(2000), bytes([3, 1]), bytes([3, 1]), bytes([2]), bytes([4])),
        "queue_garbage": steps(alloc(64), scribble(40, b"\xff" * 16), bytes([2]), bytes([4]), bytes([5, 1])),
        "done_entry_forged": steps(alloc(64), scribble(64 + 8 * 40, struct.pack("<QQ", 1, 30000)),
                                   scribble(56 + 16, struct.pack("<Q", 1)), bytes([2])),
        "attach_header": steps(bytes([5, 0])) + bytes(range(256)),
    }


def main() -> None:
    for target, inputs in (("predict_wire", predict_wire()), ("infer_wire", infer_wire()), ("channel", channel())):
        folder = os.path.join(HERE, "corpus", target)
        os.makedirs(folder, exist_ok=True)
        for name, data in inputs.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
