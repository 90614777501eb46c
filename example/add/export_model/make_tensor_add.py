"""Writes servables/add/1/tensor_add.onnx: y = x1 + x2 on float32 [2, 2] tensors (no batch dim), the model of
MindSpore Serving's add example.

    python example/add/export_model/make_tensor_add.py [OUTPUT_PATH]
"""
import os
import sys

import onnx
from onnx import TensorProto, helper

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "..", "..", "..", "servables", "add", "1", "tensor_add.onnx")


def tensor_add_model() -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 2]) for name in ("x1", "x2")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    graph = helper.make_graph([helper.make_node("Add", ["x1", "x2"], ["y"])], "tensor_add", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="mindserve")
    model.ir_version = 8  # loadable by every ONNX Runtime release of the last years
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    path = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUTPUT)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(tensor_add_model(), path)
    print("wrote", path)
