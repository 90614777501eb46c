"""Writes the two models of the add_sub servable into servables/add_sub/1/: tensor_add.onnx (y = x1 + x2) and
tensor_sub.onnx (y = x1 - x2), both on float32 [2, 2] tensors without a batch dim, the models of MindSpore
Serving's add/sub pipeline example. The graphs have no weights, so the output is the same on every run.

    python example/add_sub/export_model/make_add_sub_models.py [OUTPUT_FOLDER]
"""
import os
import sys

import onnx
from onnx import TensorProto, helper

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_FOLDER = os.path.join(HERE, "..", "..", "..", "servables", "add_sub", "1")


def binary_model(op_type: str, graph_name: str) -> onnx.ModelProto:
    """A model with one ONNX node ``op_type`` computing y from x1 and x2, float32 [2, 2] each."""
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 2]) for name in ("x1", "x2")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    graph = helper.make_graph([helper.make_node(op_type, ["x1", "x2"], ["y"])], graph_name, inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="mindserve")
    model.ir_version = 8  # loadable by every ONNX Runtime release of the last years
    onnx.checker.check_model(model)
    return model


def write_models(folder: str) -> list[str]:
    """Write tensor_add.onnx and tensor_sub.onnx into ``folder``; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for file_name, op_type, graph_name in (("tensor_add.onnx", "Add", "tensor_add"),
                                           ("tensor_sub.onnx", "Sub", "tensor_sub")):
        path = os.path.join(folder, file_name)
        onnx.save(binary_model(op_type, graph_name), path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_models(os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_FOLDER)):
        print("wrote", written)
