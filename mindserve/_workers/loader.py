"""Loads one version of a servable inside a worker: imports its servable_config.py, loads the declared models
on the worker's device and checks them against the stages that use them."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Optional

from mindserve import _backends
from mindserve._backends import mindir
from mindserve._dtypes import MS_UNKNOWN
from mindserve._errors import ServingError
from mindserve._servable import definition
from mindserve._servable.directory import version_path
from mindserve._servable.seldon import check_seldon
from mindserve._workers.executor import MethodExecutor
from mindserve._workers.model_runner import ModelRunner


def import_servable_config(servable_directory: str, name: str, version: int = 0) -> definition.ServableDefinition:
    """Import ``<servable_directory>/<name>/servable_config.py`` as module ``<name>.servable_config`` and return
    what it declared (``version``, when not 0, is the version folder ``register.version_path()`` names)."""
    mindir.prepare_process()  # before the config imports protobuf: MindSpore needs a say in it
    servable = definition.begin_servable(name)
    if version:
        servable.version_folder = os.path.abspath(version_path(servable_directory, name, version))
    directory = os.path.abspath(servable_directory)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        importlib.import_module(f"{name}.servable_config")
    except Exception as exc:
        # the line of the servable's own code that failed (a declare_model or register_method call, say), not
        # the line inside mindserve that raised; the innermost frame when none is the servable's
        frames = traceback.extract_tb(exc.__traceback__)
        own = os.path.join(directory, name) + os.sep
        where = next((f for f in reversed(frames) if os.path.abspath(f.filename).startswith(own)), frames[-1])
        raise RuntimeError(
            f"import {name}.servable_config failed, {exc} ({os.path.basename(where.filename)}, line {where.lineno})"
        ) from exc
    return servable


def _bind(runner: ModelRunner):
    def run(subgraph: int, instances: list) -> list:
        outputs = []
        for result in runner.run(subgraph, instances):
            if isinstance(result, ServingError):
                raise RuntimeError(result.message)
            outputs.append(result)
        return outputs

    return run


def _not_here(model: definition.Model):
    def run(subgraph: int, instances: list) -> list:
        raise RuntimeError(
            f"Model({model.key}).call() failed: the model is not loaded in this process, which runs "
            f"Python stages only (num_parallel_workers is above the number of device ids); a model "
            f"runs as a stage of its own (add_stage), or set num_parallel_workers to at most the "
            f"number of device ids to call it from a Python stage"
        )

    return run


def load_servable(
    servable_directory: str,
    name: str,
    version: int,
    device_type: Optional[str],
    device_id: int,
    max_batch_size: Optional[int] = None,
    python_only: bool = False,
) -> MethodExecutor:
    """Everything a worker needs to run the servable's methods; raises RuntimeError with a text for the user.
    A ``python_only`` worker (one of num_parallel_workers' extra processes) imports the servable but loads no
    model: it runs Python stages only, and Model.call from one fails with a text that says so."""
    servable = import_servable_config(servable_directory, name, version)
    check_seldon(servable, os.path.join(os.path.abspath(servable_directory), name))
    if python_only:
        for model in servable.models:
            model._runner = _not_here(model)
        return MethodExecutor(servable, {})
    if servable.models and version == 0:
        raise RuntimeError(
            f"There is no valid version directory of models while there are models declared in "
            f"servable_config.py, servable directory: {servable_directory}, servable name: {name}"
        )
    runners: dict[definition.Model, ModelRunner] = {}
    folder = version_path(servable_directory, name, version)
    for model in servable.models:
        sessions = []
        for file in model.files:
            path = os.path.join(folder, file)
            try:
                if not os.path.isfile(path):
                    raise RuntimeError(f"model file '{path}' not exist")
                sessions.append(_backends.load_model(model.model_format, path, device_type, device_id, model.options))
            except Exception as exc:
                raise RuntimeError(
                    f"Load model failed, servable directory: '{servable_directory}', servable name: "
                    f"'{name}', model file: '{file}', version number {version}, load error details: "
                    f"{exc}"
                ) from exc
        runner = ModelRunner(model, sessions, max_batch_size)
        if model.inputs_count is not None and model.outputs_count is not None:
            runner.check_counts(model.inputs_count, model.outputs_count)
        model._runner = _bind(runner)
        runners[model] = runner
    return MethodExecutor(servable, runners)


def batch_limit(executor: MethodExecutor, max_batch_size: int) -> int:
    """How many instances a worker takes from its queue at once: ``max_batch_size`` when set, else the largest
    fixed batch size of the servable's batching models, else 0 (everything queued: the model runner still
    splits it into runs of a model's batch size)."""
    if max_batch_size:
        return max_batch_size
    sizes = [
        runner.fixed_batch_size(session) or 0
        for runner in executor.runners.values()
        if runner.model.with_batch_dim
        for session in runner.sessions
    ]
    return max(sizes, default=0)


def _tensor_spec(runner: ModelRunner, spec) -> dict:
    """A model input or output as the master describes it: dtype code and per-instance shape (without the batch
    dim of a model declared with_batch_dim), -1 for a variable dim."""
    shape = list(spec.shape[1:] if runner.model.with_batch_dim else spec.shape)
    return {"dtype": spec.dtype, "shape": shape}


# what is known of a method input or output that no model stage fixes (a Python stage may take or return
# anything): no dtype (MS_UNKNOWN) and no shape, not even a rank
UNKNOWN_SPEC = {"dtype": MS_UNKNOWN, "shape": None}


def _method_specs(executor: MethodExecutor, method: definition.MethodDefinition) -> tuple[list, list]:
    """The dtype and per-instance shape of each method input that feeds a model input directly (the first model
    stage that takes it says) and of each output that is a model output (or a method input) directly."""
    inputs: list = [None] * len(method.input_names)
    for stage in method.stages:
        runner = executor.runners.get(stage.model) if stage.is_model else None
        if runner is None or not runner.sessions:
            continue
        session = runner.sessions[0]  # add_stage runs subgraph 0
        for position, arg in enumerate(stage.args):
            if arg.stage == 0 and inputs[arg.index] is None and position < len(session.inputs):
                inputs[arg.index] = _tensor_spec(runner, session.inputs[position])
    outputs = []
    for placeholder in method.outputs:
        spec = None
        if placeholder.stage == 0:
            spec = inputs[placeholder.index]
        else:
            stage = method.stages[placeholder.stage - 1]
            runner = executor.runners.get(stage.model) if stage.is_model else None
            if runner is not None and runner.sessions and placeholder.index < len(runner.sessions[0].outputs):
                spec = _tensor_spec(runner, runner.sessions[0].outputs[placeholder.index])
        outputs.append(spec)
    return [s or dict(UNKNOWN_SPEC) for s in inputs], [s or dict(UNKNOWN_SPEC) for s in outputs]


def method_signatures(executor: MethodExecutor) -> dict:
    """What the master needs to know of each method: its input and output names, and in ``input_specs`` /
    ``output_specs`` (one per name, in order) ``{"dtype": code, "shape": [per-instance dims, -1 variable]}``
    where a model fixes them, ``{"dtype": 0 (MS_UNKNOWN), "shape": None}`` where nothing does."""
    signatures = {}
    for m in executor.servable.methods.values():
        input_specs, output_specs = _method_specs(executor, m)
        signatures[m.name] = {
            "inputs": m.input_names,
            "outputs": m.output_names,
            "input_specs": input_specs,
            "output_specs": output_specs,
            **method_plan(m),
        }
    return signatures


def method_plan(method: definition.MethodDefinition) -> dict:
    """What the master needs to run a method as segments over several processes without importing the servable
    (mindserve._supervision.segments): each stage's kind and the values it uses, and the values that are the
    method's outputs, as ``[stage, index]`` references (stage 0: the method inputs; stages counted from 1)."""
    return {
        "stages": [
            {"model": stage.is_model, "args": [[p.stage, p.index] for p in stage.args], "outputs": stage.outputs_count}
            for stage in method.stages
        ],
        "output_refs": [[p.stage, p.index] for p in method.outputs],
    }
