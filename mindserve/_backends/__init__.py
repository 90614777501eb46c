"""Model backends: each loads a model file on a device and runs batches of numpy inputs.

``load_model`` picks the backend for a declared format: ONNX Runtime for ``"onnx"`` (``onnx_runtime``),
MindSpore for ``"mindir"`` (``mindir``). A backend's package is imported only when a model of its format is
loaded (in the worker), and a missing one raises an error that names the extra to install. Per-model options
are described and checked in ``options``.
"""

from __future__ import annotations

from typing import Optional

from mindserve._backends.base import BackendSession, TensorSpec

__all__ = ["BackendSession", "TensorSpec", "load_model"]


def load_model(
    model_format: str, path: str, device_type: Optional[str], device_id: int, options: dict
) -> BackendSession:
    """Load one model file for ``device_type`` (None or "cpu", "gpu", "ascend") and ``device_id``, with the
    model's ``options`` as ``options.check_options`` gave them (every option of the format present)."""
    if model_format == "onnx":
        from mindserve._backends import onnx_runtime

        return onnx_runtime.load(path, device_type, device_id, options)
    if model_format == "mindir":
        from mindserve._backends import mindir

        return mindir.load(path, device_type, device_id, options)
    raise RuntimeError(f"model format {model_format!r} has no backend")
