"""The add_sub servable: MindSpore Serving's pipeline example, two models chained with Python stages between them.

Models (version folder ``1/``), float32 [2, 2] tensors without a batch dim:
    tensor_add.onnx     y = x1 + x2
    tensor_sub.onnx     y = x1 - x2

Methods, each taking x1, x2, x3 (float32 [2, 2]) and answering y (float32 [2, 2]):
    add_sub_only_model  y = x1 + x2 - x3             two model stages, nothing in between
    add_sub_complex     y = x1 + x2 + 1 - x3 + 1     model, Python stage, model, Python stage
    add_sub_call_model  y = x1 + x2 + 1 - x3 + 1     one Python stage that runs both models through Model.call

The ``+ 1`` stages keep float32 (no promotion to float64), so y is exactly what float32 arithmetic gives in the
order written above.
"""
import numpy as np

from mindserve.server import register

add_model = register.declare_model(model_file="tensor_add.onnx", model_format="ONNX", with_batch_dim=False)
sub_model = register.declare_model(model_file="tensor_sub.onnx", model_format="ONNX", with_batch_dim=False)


def add_one(y: np.ndarray) -> np.ndarray:
    """y + 1 in y's own dtype (np.float32(1), so that a float32 tensor stays float32)."""
    return y + y.dtype.type(1)


def add_sub_with_calls(x1: np.ndarray, x2: np.ndarray, x3: np.ndarray) -> np.ndarray:
    """The whole add_sub_complex pipeline inside one Python stage: the models run through Model.call."""
    y = add_one(add_model.call(x1, x2))
    return add_one(sub_model.call(y, x3))


@register.register_method(output_names=["y"])
def add_sub_only_model(x1, x2, x3):
    """y = x1 + x2 - x3."""
    y = register.add_stage(add_model, x1, x2, outputs_count=1)
    return register.add_stage(sub_model, y, x3, outputs_count=1)


@register.register_method(output_names=["y"])
def add_sub_complex(x1, x2, x3):
    """y = x1 + x2 + 1 - x3 + 1: model, Python, model, Python."""
    y = register.add_stage(add_model, x1, x2, outputs_count=1)
    y = register.add_stage(add_one, y, outputs_count=1)
    y = register.add_stage(sub_model, y, x3, outputs_count=1)
    return register.add_stage(add_one, y, outputs_count=1)


@register.register_method(output_names=["y"])
def add_sub_call_model(x1, x2, x3):
    """y = x1 + x2 + 1 - x3 + 1, with both models called from one Python stage."""
    return register.add_stage(add_sub_with_calls, x1, x2, x3, outputs_count=1)
