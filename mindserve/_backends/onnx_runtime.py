"""The ONNX Runtime backend (the ``onnx`` extra): CPU, CUDA for device_type GPU, CANN for Ascend."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from mindserve import _dtypes
from mindserve._backends.base import TensorSpec

_CODE_OF_ONNX_TYPE = {
    "tensor(bool)": _dtypes.MS_BOOL,
    "tensor(int8)": _dtypes.MS_INT8,
    "tensor(uint8)": _dtypes.MS_UINT8,
    "tensor(int16)": _dtypes.MS_INT16,
    "tensor(uint16)": _dtypes.MS_UINT16,
    "tensor(int32)": _dtypes.MS_INT32,
    "tensor(uint32)": _dtypes.MS_UINT32,
    "tensor(int64)": _dtypes.MS_INT64,
    "tensor(uint64)": _dtypes.MS_UINT64,
    "tensor(float16)": _dtypes.MS_FLOAT16,
    "tensor(float)": _dtypes.MS_FLOAT32,
    "tensor(double)": _dtypes.MS_FLOAT64,
    "tensor(string)": _dtypes.MS_STRING,
}

# execution provider for each device type; CPU needs no device id
_PROVIDER_OF_DEVICE = {"cpu": "CPUExecutionProvider", "gpu": "CUDAExecutionProvider", "ascend": "CANNExecutionProvider"}

# graph_optimization_level option -> the name of ONNX Runtime's GraphOptimizationLevel member
_OPTIMIZATION_LEVELS = {
    "disable_all": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeError(
            "model format ONNX needs ONNX Runtime, which is not installed: "
            "pip install 'mindserve[onnx]' (or onnxruntime / onnxruntime-gpu)"
        ) from exc
    return onnxruntime


def _spec(node) -> TensorSpec:
    code = _CODE_OF_ONNX_TYPE.get(node.type, _dtypes.MS_UNKNOWN)
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or []))
    return TensorSpec(node.name, code, shape)


def providers_for(device_type: Optional[str], device_id: int, available: Sequence[str]) -> list:
    """The provider list for a device; raises when this onnxruntime build lacks the provider it needs."""
    kind = (device_type or "cpu").lower()
    provider = _PROVIDER_OF_DEVICE.get(kind)
    if provider is None:
        raise RuntimeError(
            f"Unsupported device type '{device_type}', only support 'Ascend', 'GPU', 'CPU' and None, case ignored"
        )
    if provider not in available:
        package = {"gpu": "onnxruntime-gpu", "ascend": "onnxruntime-cann"}.get(kind, "onnxruntime")
        raise RuntimeError(
            f"device type {device_type} needs ONNX Runtime's {provider}, which this onnxruntime "
            f"build does not have (it has {', '.join(available)}); install {package}"
        )
    if kind == "cpu":
        return [provider]
    return [(provider, {"device_id": device_id})]


class OnnxSession:
    """One ONNX model loaded in ONNX Runtime."""

    def __init__(self, session):
        self.session = session  # the InferenceSession (its get_session_options() shows the options applied)
        self.inputs = [_spec(i) for i in session.get_inputs()]
        self.outputs = [_spec(o) for o in session.get_outputs()]
        self._input_names = [i.name for i in self.inputs]
        self._output_names = [o.name for o in self.outputs]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One array per output, for one array per input in the model's input order."""
        return self.session.run(self._output_names, dict(zip(self._input_names, inputs)))


def session_options(ort, options: dict):
    """ONNX Runtime SessionOptions for a model's options (see ``mindserve._backends.options``)."""
    result = ort.SessionOptions()
    result.intra_op_num_threads = options["thread_num"]
    result.inter_op_num_threads = options["inter_op_num_threads"]
    result.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, _OPTIMIZATION_LEVELS[options["graph_optimization_level"]]
    )
    return result


def load(path: str, device_type: Optional[str], device_id: int, options: dict) -> OnnxSession:
    """Load an ONNX file into an InferenceSession on the device's execution provider."""
    ort = _import_onnxruntime()
    providers = providers_for(device_type, device_id, ort.get_available_providers())
    return OnnxSession(ort.InferenceSession(path, session_options(ort, options), providers=providers))
