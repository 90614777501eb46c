"""Small ONNX models the tests serve, built with the onnx package at test time."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(graph: onnx.GraphProto, path: str) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="mindserve-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def add_model(path: str, batch_dim=None, row_shape=(2,), dtype=TensorProto.FLOAT) -> None:
    """y = x1 + x2 with inputs of shape [batch_dim, *row_shape] (batch_dim None: a variable batch dim "N")."""
    shape = ["N" if batch_dim is None else batch_dim, *row_shape]
    inputs = [helper.make_tensor_value_info(n, dtype, shape) for n in ("x1", "x2")]
    output = helper.make_tensor_value_info("y", dtype, shape)
    _save(helper.make_graph([helper.make_node("Add", ["x1", "x2"], ["y"])], "add", inputs, [output]), path)


def offset_model(path: str, offset: float) -> None:
    """y = x + offset on float32 [N, 2]: one model per version, told apart by the offset."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    const = numpy_helper.from_array(np.array([offset], np.float32), "offset")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "offset"], ["y"])], "offset", [x], [y], initializer=[const]
    )
    _save(graph, path)


def batch_probe_model(path: str, batch_dim=None) -> None:
    """y = x * 2 and n = the number of rows of the batch the model ran on, repeated per row ([N] int64):
    tells the tests how instances were batched."""
    shape = ["N" if batch_dim is None else batch_dim, 2]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    n = helper.make_tensor_value_info("n", TensorProto.INT64, [shape[0]])
    two = numpy_helper.from_array(np.array([2.0], np.float32), "two")
    zero = numpy_helper.from_array(np.array([0], np.int64), "zero")
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["y"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["rows"], axis=0),  # [1]: the batch size
        helper.make_node("Slice", ["shape", "zero", "one_end"], ["rows_dim"]),  # [1], same value
        helper.make_node("Expand", ["rows", "rows_dim"], ["n"]),  # [rows] filled with rows
    ]
    one_end = numpy_helper.from_array(np.array([1], np.int64), "one_end")
    graph = helper.make_graph(nodes, "batch_probe", [x], [y, n], initializer=[two, zero, one_end])
    _save(graph, path)


def lookup_model(path: str, rows: int = 5) -> None:
    """y = table[i]: a row of a [rows, 2] float32 table for each int64 index of i ([N]); an index outside the
    table makes ONNX Runtime fail the whole run (the embedding lookup of a token id out of the vocabulary)."""
    i = helper.make_tensor_value_info("i", TensorProto.INT64, ["N"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    table = numpy_helper.from_array(np.arange(rows * 2, dtype=np.float32).reshape(rows, 2), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "i"], ["y"], axis=0)], "lookup", [i], [y], initializer=[table]
    )
    _save(graph, path)
