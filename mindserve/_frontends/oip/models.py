"""Models of the Open Inference Protocol: every (servable, method) is the model ``servable.method``; a servable
with a single method also answers to its bare name. A version is a number ("" or "0": the newest version with a
live worker). Readiness follows the workers; metadata does not need a live worker."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, Optional

from mindserve import _dtypes
from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._dispatch.route import MethodSignature, Route, TensorSpec
from mindserve._errors import InvalidInput, NotServed, clip

if TYPE_CHECKING:  # (the type of a servable version's handle; frontends never reach into supervision)
    from mindserve._supervision.servable_workers import ServableWorkers

SERVER_NAME = "mindserve"
PLATFORM = "mindserve"

# the parameter that puts a tensor in a registered shared memory region (Triton's shared memory extensions): not
# offered to remote clients, as in MSService
SHM_PARAMETER = "shared_memory_region"


class Model:
    """A model name resolved to a servable method, with every started version of the servable."""

    def __init__(self, name: str, servable: str, method: str, groups: dict[int, ServableWorkers]):
        self.name = name
        self.servable = servable
        self.method = method
        self.groups = groups

    def versions(self) -> list[int]:
        return sorted(v for v, g in self.groups.items() if self.method in g.methods)

    def group(self, version: int) -> ServableWorkers:
        """The version asked for; for 0 the newest with a live worker, else the newest. NOT_FOUND when the
        servable has no such version."""
        if version == 0:
            versions = self.versions()
            live = [v for v in versions if self.groups[v].ready]
            return self.groups[max(live or versions)]
        group = self.groups.get(version)
        if group is None or self.method not in group.methods:
            running = ", ".join(str(v) for v in self.versions())
            raise NotServed(f"Model '{self.name}' version {version} is not found, running versions: {running}")
        return group


class TensorMetadata(NamedTuple):
    """A tensor of a model's metadata: dim 0 is the instance (-1, any count), then the per-instance shape; where no
    model fixes the tensor (a Python stage takes or makes it) the data type is "" and the shape only [-1]."""

    name: str
    datatype: str
    shape: list


class ModelMetadata(NamedTuple):
    name: str
    platform: str
    versions: list
    inputs: list
    outputs: list


def version_number(model_name: str, text: str) -> int:
    """A version given as text: "" is 0 (the newest); anything but up to 20 ASCII digits is a bad request."""
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise InvalidInput(f"Model '{clip(model_name)}' version '{clip(text)}' is not a version number")
    return int(text)


def _servable_groups(dispatcher: Dispatcher, servable: str) -> dict[int, ServableWorkers]:
    return {g.version: g for g in dispatcher.groups() if g.name == servable}


def find_model(dispatcher: Dispatcher, model_name: str) -> Model:
    """``servable`` (a servable with one method) or ``servable.method``; NOT_FOUND otherwise."""
    groups = _servable_groups(dispatcher, model_name)
    if groups:
        methods = sorted({m for g in groups.values() for m in g.methods})
        if len(methods) == 1:
            return Model(model_name, model_name, methods[0], groups)
        name = clip(model_name)
        raise NotServed(f"Model '{name}' is not found: servable {name} has {len(methods)} methods, name one as "
                        f"'{name}.<method>' ({', '.join(methods)})")
    servable, dot, method = model_name.rpartition(".")
    groups = _servable_groups(dispatcher, servable) if dot else {}
    if any(method in g.methods for g in groups.values()):
        return Model(model_name, servable, method, groups)
    raise NotServed(f"Model '{clip(model_name)}' is not found, models are named 'servable.method', or 'servable' for a "
                    f"servable with a single method")


def server_ready(dispatcher: Dispatcher) -> bool:
    """Ready while every started servable version has a live worker (vacuously true with none)."""
    return all(g.ready for g in dispatcher.groups())


def not_ready_groups(dispatcher: Dispatcher) -> list[ServableWorkers]:
    """The servable versions without a live worker, which keep the server from being ready."""
    return [g for g in dispatcher.groups() if not g.ready]


def model_group(dispatcher: Dispatcher, model_name: str, version_text: str) -> tuple[Model, ServableWorkers]:
    """The model and the version of it that ``version_text`` names (see ``Model.group``)."""
    model = find_model(dispatcher, model_name)
    return model, model.group(version_number(model_name, version_text))


def resolve_infer(dispatcher: Dispatcher, model_name: str, version_text: str) -> tuple[Model, Route]:
    """The model, the servable version that runs an inference request and the method's signature: NOT_FOUND for a
    model or version that is not served, ServingError (servable is not available) when it has no live worker."""
    model = find_model(dispatcher, model_name)
    version = version_number(model_name, version_text)
    if version:
        model.group(version)  # NOT_FOUND for a version that is not served, before "not available"
    return model, dispatcher.resolve(model.servable, model.method, version)


def model_ready(dispatcher: Dispatcher, model_name: str, version_text: str) -> Optional[bool]:
    """Whether the model (the version asked for, or any version) has a live worker; None for a model or version
    that is not served (gRPC answers it as not ready, so that clients can poll for it)."""
    version = version_number(model_name, version_text)
    try:
        model = find_model(dispatcher, model_name)
        group = model.group(version)
    except NotServed:
        return None
    return group.ready


def _tensors(names: Sequence[str], specs: Sequence[TensorSpec]) -> list[TensorMetadata]:
    return [TensorMetadata(name, _dtypes.OIP_NAME_OF.get(spec.dtype, ""),
                           [-1] + (list(spec.shape) if spec.shape is not None else []))
            for name, spec in zip(names, specs)]


def model_metadata(dispatcher: Dispatcher, model_name: str, version_text: str) -> ModelMetadata:
    """What the server knows of the model: its versions, and its inputs and outputs (in the version asked for)."""
    model, group = model_group(dispatcher, model_name, version_text)
    signature = group.methods[model.method]
    return ModelMetadata(model_name, PLATFORM, [str(v) for v in model.versions()],
                         _tensors(signature.inputs, signature.input_specs),
                         _tensors(signature.outputs, signature.output_specs))


def selected_outputs(requested: list[tuple[str, Mapping]], signature: MethodSignature, model: Model) -> list[str]:
    """The outputs a request asks for, each ``(name, parameters)``; every output, in the method's order, when it
    names none."""
    names = signature.outputs
    if not requested:
        return list(names)
    selected = []
    for name, parameters in requested:
        if name not in names:
            raise InvalidInput(f"Cannot find output {clip(name)} in the outputs of servable {model.servable}, method "
                               f"{model.method}: {', '.join(names)}")
        if name in selected:
            raise InvalidInput(f"Output {clip(name)} is requested more than once")
        if SHM_PARAMETER in parameters:
            raise InvalidInput(f"Output {clip(name)}: shared memory tensor data is not supported by this server")
        if "classification" in parameters:
            raise InvalidInput(f"Output {clip(name)}: the classification extension is not supported")
        selected.append(name)
    return selected
