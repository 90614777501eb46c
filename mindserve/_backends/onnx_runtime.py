"""The ONNX Runtime backend (the ``onnx`` extra): CPU, CUDA for device_type GPU, CANN for Ascend."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from mindserve import _dtypes
from mindserve._backends.base import TensorSpec

_CODE_OF_ONNX_TYPE = {
    "tensor(bool)": _dtypes.MS_BOOL, "tensor(int8)": _dtypes.MS_INT8, "tensor(uint8)": _dtypes.MS_UINT8,
    "tensor(int16)": _dtypes.MS_INT16, "tensor(uint16)": _dtypes.MS_UINT16, "tensor(int32)": _dtypes.MS_INT32,
    "tensor(uint32)": _dtypes.MS_UINT32, "tensor(int64)": _dtypes.MS_INT64, "tensor(uint64)": _dtypes.MS_UINT64,
    "tensor(float16)": _dtypes.MS_FLOAT16, "tensor(float)": _dtypes.MS_FLOAT32, "tensor(double)": _dtypes.MS_FLOAT64,
    "tensor(string)": _dtypes.MS_STRING,
}

# execution provider for each device type; CPU needs no device id
_PROVIDER_OF_DEVICE = {"cpu": "CPUExecutionProvider", "gpu": "CUDAExecutionProvider", "ascend": "CANNExecutionProvider"}

# session options a servable may set through declare_model(options=...), with this machine's defaults:
# one thread per session, since every device worker is its own process and workers share the cores
_SESSION_OPTIONS = {"intra_op_num_threads": 1, "inter_op_num_threads": 1}


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeError("model format ONNX needs ONNX Runtime, which is not installed: "
                           "pip install 'mindserve[onnx]' (or onnxruntime / onnxruntime-gpu)") from exc
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
        raise RuntimeError(f"Unsupported device type '{device_type}', only support 'Ascend', 'GPU', 'CPU' and None, "
                           f"case ignored")
    if provider not in available:
        package = {"gpu": "onnxruntime-gpu", "ascend": "onnxruntime-cann"}.get(kind, "onnxruntime")
        raise RuntimeError(f"device type {device_type} needs ONNX Runtime's {provider}, which this onnxruntime "
                           f"build does not have (it has {', '.join(available)}); install {package}")
    if kind == "cpu":
        return [provider]
    return [(provider, {"device_id": device_id})]


class OnnxSession:
    """One ONNX model loaded in ONNX Runtime."""

    def __init__(self, session):
        self._session = session
        self.inputs = [_spec(i) for i in session.get_inputs()]
        self.outputs = [_spec(o) for o in session.get_outputs()]
        self._input_names = [i.name for i in self.inputs]
        self._output_names = [o.name for o in self.outputs]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self._session.run(self._output_names, dict(zip(self._input_names, inputs)))


def load(path: str, device_type: Optional[str], device_id: int, options: dict) -> OnnxSession:
    ort = _import_onnxruntime()
    unknown = sorted(set(options) - set(_SESSION_OPTIONS))
    if unknown:
        raise RuntimeError(f"unknown ONNX model option(s) {', '.join(unknown)}; known: {', '.join(_SESSION_OPTIONS)}")
    session_options = ort.SessionOptions()
    for key, default in _SESSION_OPTIONS.items():
        setattr(session_options, key, int(options.get(key, default)))
    providers = providers_for(device_type, device_id, ort.get_available_providers())
    return OnnxSession(ort.InferenceSession(path, session_options, providers=providers))
