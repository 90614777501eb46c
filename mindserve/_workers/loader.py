"""Loads one version of a servable inside a worker: imports its servable_config.py, loads the declared models
on the worker's device and checks them against the stages that use them."""
from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Optional

from mindserve import _backends
from mindserve._errors import ServingError
from mindserve._servable import definition
from mindserve._servable.directory import version_path
from mindserve._workers.executor import MethodExecutor
from mindserve._workers.model_runner import ModelRunner


def import_servable_config(servable_directory: str, name: str) -> definition.ServableDefinition:
    """Import ``<servable_directory>/<name>/servable_config.py`` as module ``<name>.servable_config`` and return
    what it declared."""
    servable = definition.begin_servable(name)
    directory = os.path.abspath(servable_directory)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        importlib.import_module(f"{name}.servable_config")
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        raise RuntimeError(f"import {name}.servable_config failed, {exc} ({os.path.basename(where.filename)}, "
                           f"line {where.lineno})") from exc
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


def load_servable(servable_directory: str, name: str, version: int, device_type: Optional[str],
                  device_id: int) -> MethodExecutor:
    """Everything a worker needs to run the servable's methods; raises RuntimeError with a text for the user."""
    servable = import_servable_config(servable_directory, name)
    if servable.models and version == 0:
        raise RuntimeError(f"There is no valid version directory of models while there are models declared in "
                           f"servable_config.py, servable directory: {servable_directory}, servable name: {name}")
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
                raise RuntimeError(f"Load model failed, servable directory: '{servable_directory}', servable name: "
                                   f"'{name}', model file: '{file}', version number {version}, load error details: "
                                   f"{exc}") from exc
        runner = ModelRunner(model, sessions)
        if model.inputs_count is not None:
            runner.check_counts(model.inputs_count, model.outputs_count)
        model._runner = _bind(runner)
        runners[model] = runner
    return MethodExecutor(servable, runners)


def method_signatures(executor: MethodExecutor) -> dict:
    """What the master needs to know of each method: its input and output names."""
    return {m.name: {"inputs": m.input_names, "outputs": m.output_names}
            for m in executor.servable.methods.values()}
