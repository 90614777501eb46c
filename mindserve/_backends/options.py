"""Per-model options: what ``declare_model(..., options={...})`` accepts for each model format.

MindSpore Serving passes options as objects (``Context(thread_num=...)``, ``CPUDeviceInfo(precision_mode=...)``);
mindserve takes a plain dict with the same names where they exist. Every option applies to one or more
formats; a key that does not apply to the model's format, or a bad value, is refused when the model is
declared (so ``start_servables`` fails with a text that names the option and the model file).

Options (default in brackets):

- ``thread_num`` (ONNX, MindIR) [1]: intra-op threads of the model's runtime. Each device worker is its own
  process and workers share the machine's cores; a runtime's default (a thread per core, in every worker)
  would oversubscribe them, and batching already keeps one thread busy. Raise it for a single worker with big
  batches. ONNX Runtime: ``SessionOptions.intra_op_num_threads`` of the model's session. MindSpore: the CPU
  kernel threads (``mindspore.device_context.cpu.op_tuning.threads_num``), which MindSpore sets once per
  process: all MindIR models of one servable must agree on it.
- ``inter_op_num_threads`` (ONNX) [1]: ``SessionOptions.inter_op_num_threads`` (threads that run independent
  nodes at once; only used by ONNX Runtime's parallel execution mode).
- ``graph_optimization_level`` (ONNX) ["all"]: ``"disable_all"``, ``"basic"``, ``"extended"`` or ``"all"``,
  ONNX Runtime's graph optimisation levels.
- ``precision_mode`` (MindIR) ["origin"]: ``"origin"`` keeps the model's data types (MindSpore's default on
  every device). On Ascend, CANN's modes too: ``"force_fp16"``, ``"allow_fp32_to_fp16"``,
  ``"allow_mix_precision"``, ``"must_keep_origin_dtype"``, ``"force_fp32"``, ``"allow_fp32_to_bf16"``,
  ``"allow_mix_precision_fp16"``, ``"allow_mix_precision_bf16"`` (set once per process, like ``thread_num``).
  MindSpore Serving's ``"fp16"`` for CPU and GPU is a MindSpore Lite option that MindSpore itself lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

# how texts name each format
FORMAT_NAMES = {"onnx": "ONNX", "mindir": "MindIR"}

GRAPH_OPTIMIZATION_LEVELS = ("disable_all", "basic", "extended", "all")
# CANN's precision modes, as MindSpore's ascend precision_mode takes them
ASCEND_PRECISION_MODES = (
    "force_fp16",
    "allow_fp32_to_fp16",
    "allow_mix_precision",
    "must_keep_origin_dtype",
    "force_fp32",
    "allow_fp32_to_bf16",
    "allow_mix_precision_fp16",
    "allow_mix_precision_bf16",
)
PRECISION_MODES = ("origin",) + ASCEND_PRECISION_MODES


def _positive_int(value: Any) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "an int >= 1"
    return None


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], Optional[str]]:
    def check(value: Any) -> Optional[str]:
        if not isinstance(value, str) or value not in choices:
            return "one of " + ", ".join(repr(c) for c in choices)
        return None

    return check


@dataclass(frozen=True)
class OptionSpec:
    """One option: the formats it applies to, its default, and a check that names what a bad value should be."""

    formats: tuple[str, ...]
    default: Any
    check: Callable[[Any], Optional[str]]


OPTIONS: dict[str, OptionSpec] = {
    "thread_num": OptionSpec(("onnx", "mindir"), 1, _positive_int),
    "inter_op_num_threads": OptionSpec(("onnx",), 1, _positive_int),
    "graph_optimization_level": OptionSpec(("onnx",), "all", _one_of(GRAPH_OPTIMIZATION_LEVELS)),
    "precision_mode": OptionSpec(("mindir",), "origin", _one_of(PRECISION_MODES)),
}


def supported(model_format: str) -> list[str]:
    """The option names that apply to ``model_format`` (lower case), in documentation order."""
    return [name for name, spec in OPTIONS.items() if model_format in spec.formats]


def check_options(model_format: str, options: Optional[dict]) -> dict:
    """All options of a model of ``model_format`` (lower case): the given ones, checked, and the defaults of the
    others. Raises ValueError with a text that names the bad option."""
    given = dict(options or {})
    names = supported(model_format)
    for key, value in given.items():
        if key not in names:
            raise ValueError(
                f"option {key!r} is not supported for model format {FORMAT_NAMES[model_format]}, "
                f"supported options: {', '.join(names)}"
            )
        expected = OPTIONS[key].check(value)
        if expected is not None:
            raise ValueError(f"option {key!r} should be {expected}, but given {value!r}")
    return {name: given.get(name, OPTIONS[name].default) for name in names}
