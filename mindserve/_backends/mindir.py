"""The MindSpore backend for MindIR files (the ``mindir`` extra): CPU, and GPU or Ascend where the installed
MindSpore is built for them.

A model is a file exported by MindSpore (``mindspore.export(net, *inputs, file_name=..., file_format="MINDIR")``),
loaded with ``mindspore.load`` and run through ``mindspore.nn.GraphCell``, as MindSpore's own inference does.

Input and output specs are read from the file itself (``mindir_format``): MindSpore's Python API does not report
them. A tuple output (``return a, b``, nested tuples too) is one output per tensor, in order, named
``output_0``, ``output_1``...; a graph whose inputs are not tensors, or whose output is a sequence of variable
length, is refused at load.

MindSpore keeps its device and runtime settings per process, and a worker process serves one device: the first
MindIR model a worker loads sets them (``mindspore.set_device``, CPU kernel threads, Ascend precision mode), and
later models of the same worker must ask for the same values.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional, Sequence

import numpy as np

from mindserve._backends.base import TensorSpec
from mindserve._backends.mindir_format import read_specs

# device_type -> MindSpore's device target name
_TARGET_OF_DEVICE = {"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}

# what this process has set in MindSpore (the first MindIR model's device and options), see the module docstring
_process_settings: dict[str, Any] = {}


_PROTOBUF_IMPLEMENTATION = "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"


def prepare_process() -> None:
    """Called by a worker before it imports servable_config.py: where MindSpore is installed, select protobuf's
    pure-Python implementation, unless protobuf is imported already or the environment chose one.

    MindSpore's generated protobuf modules (imported by ``import mindspore``) are of the old kind that only that
    implementation loads; MindSpore selects it itself at import, through this environment variable, but that is
    too late once servable_config.py (``mindserve.server``, grpc) has imported protobuf. A worker makes no
    protobuf messages on its data path, so the slower implementation costs it nothing but import time."""
    import importlib.util

    if "google.protobuf" in sys.modules or _PROTOBUF_IMPLEMENTATION in os.environ:
        return
    if importlib.util.find_spec("mindspore") is not None:
        os.environ[_PROTOBUF_IMPLEMENTATION] = "python"


def _import_mindspore():
    try:
        import mindspore
    except ImportError as exc:
        raise RuntimeError(
            "model format MindIR needs MindSpore, which is not installed: "
            "pip install 'mindserve[mindir]' (or mindspore)"
        ) from exc
    except TypeError as exc:
        # "Descriptors cannot be created directly": protobuf runs another implementation (see prepare_process)
        from google.protobuf.internal import api_implementation

        raise RuntimeError(
            f"MindSpore cannot be imported in a process whose protobuf runs its "
            f"{api_implementation.Type()!r} implementation (MindSpore's generated modules need "
            f"'python'): set {_PROTOBUF_IMPLEMENTATION}=python for the serving process"
        ) from exc
    return mindspore


# ---------------------------------------------------------------------------------------------------------------
# process settings
# ---------------------------------------------------------------------------------------------------------------


def _set_once(key: str, value: Any, apply) -> None:
    """Apply a per-process MindSpore setting the first time; later models must ask for the same value."""
    if key in _process_settings:
        if _process_settings[key] != value:
            what = "device" if key == "device" else f"option {key!r}"
            raise RuntimeError(
                f"{what} {value!r} differs from {_process_settings[key]!r} of a MindIR model "
                f"loaded before in this worker; MindSpore sets it once per process, so the MindIR "
                f"models of a servable must use the same value"
            )
        return
    apply()
    _process_settings[key] = value


def _available(ms, target: str) -> bool:
    # each is_available() but CPU's logs warnings when its device is missing: ask only about what is needed
    return {"CPU": ms.device_context.cpu, "GPU": ms.device_context.gpu, "Ascend": ms.device_context.ascend}[
        target
    ].is_available()


def configure(ms, device_type: Optional[str], device_id: int, options: dict) -> None:
    """Set the device and the per-process options in MindSpore for a model about to be loaded."""
    kind = (device_type or "cpu").lower()
    target = _TARGET_OF_DEVICE.get(kind)
    if target is None:
        raise RuntimeError(
            f"Unsupported device type '{device_type}', only support 'Ascend', 'GPU', 'CPU' and None, case ignored"
        )
    # only the first model checks the device: a later model of the same worker has the same device
    if "device" not in _process_settings:
        if not _available(ms, target):
            raise RuntimeError(
                f"device type {target} is not available in the installed MindSpore {ms.__version__}: "
                f"it needs MindSpore built for {target}, on a machine with that device"
            )
    # a CPU worker's device id only tells workers apart: MindSpore has one CPU device, id 0
    device = (target, device_id if target != "CPU" else 0)
    _set_once("device", device, lambda: ms.set_device(*device))
    precision = options["precision_mode"]
    if precision != "origin" and target != "Ascend":
        raise RuntimeError(
            f"option 'precision_mode' {precision!r} needs device type Ascend (a CANN precision mode); "
            f"on {target} only 'origin' is supported"
        )
    _set_once(
        "thread_num", options["thread_num"], lambda: ms.device_context.cpu.op_tuning.threads_num(options["thread_num"])
    )
    if target == "Ascend":

        def apply_precision() -> None:
            if precision != "origin":  # "origin": MindSpore's own default is left as it is
                ms.device_context.ascend.op_precision.precision_mode(precision)

        _set_once("precision_mode", precision, apply_precision)


# ---------------------------------------------------------------------------------------------------------------
# the session
# ---------------------------------------------------------------------------------------------------------------


def _flatten_outputs(value, found: list) -> list:
    if isinstance(value, (tuple, list)):
        for item in value:
            _flatten_outputs(item, found)
    else:
        found.append(value)
    return found


class MindIRSession:
    """One MindIR graph loaded in MindSpore, run through a GraphCell."""

    def __init__(self, ms, cell, inputs: list[TensorSpec], outputs: list[TensorSpec]):
        self._ms = ms
        self._cell = cell
        self.inputs = inputs
        self.outputs = outputs

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One array per output, for one array per input in the graph's input order."""
        # Tensor(array) copies: outputs may alias inputs (an identity output), and inputs may live in buffers
        # that the worker reuses for the next batch
        result = self._cell(*[self._ms.Tensor(np.ascontiguousarray(a)) for a in inputs])
        outputs = [
            o.asnumpy() if isinstance(o, self._ms.Tensor) else np.asarray(o) for o in _flatten_outputs(result, [])
        ]
        if len(outputs) != len(self.outputs):
            raise RuntimeError(
                f"the MindIR graph returned {len(outputs)} outputs where the file declares {len(self.outputs)}"
            )
        return outputs


def _first_line(exc: Exception) -> str:
    # MindSpore's texts go on with C++ call stacks after the first line
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def load(path: str, device_type: Optional[str], device_id: int, options: dict) -> MindIRSession:
    """Load a MindIR file with MindSpore on the worker's device."""
    ms = _import_mindspore()
    if not path.endswith(".mindir"):
        raise RuntimeError(
            f"a MindIR model file must be named *.mindir (mindspore.load takes no other), but given "
            f"'{os.path.basename(path)}'"
        )
    inputs, outputs = read_specs(path)
    configure(ms, device_type, device_id, options)
    try:
        graph = ms.load(path)
        cell = ms.nn.GraphCell(graph)
    except Exception as exc:  # MindSpore's own error, shortened to its message
        raise RuntimeError(f"MindSpore could not load '{path}': {_first_line(exc)}") from None
    return MindIRSession(ms, cell, inputs, outputs)
