"""The add servable of MindSpore Serving's first example: y = x1 + x2 on float32 2x2 tensors."""
import numpy as np

from mindserve.server import register

model = register.declare_model(model_file="tensor_add.onnx", model_format="ONNX", with_batch_dim=False)


def cast(x1, x2):
    """Lets add_cast take inputs of any numeric type."""
    return x1.astype(np.float32), x2.astype(np.float32)


@register.register_method(output_names=["y"])
def add_common(x1, x2):
    return register.add_stage(model, x1, x2, outputs_count=1)


@register.register_method(output_names=["y"])
def add_cast(x1, x2):
    x1, x2 = register.add_stage(cast, x1, x2, outputs_count=2)
    return register.add_stage(model, x1, x2, outputs_count=1)
