"""Models of the Open Inference Protocol: every (servable, method) is the model ``servable.method``; a servable
with a single method also answers to its bare name. A version is a number ("" or "0": the newest version with a
live worker). Readiness follows the workers; metadata does not need a live worker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Optional

from mindserve import _dtypes
from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._dispatch.route import MethodSignature, Route, ServedVersion, TensorSpec
from mindserve._errors import InvalidInput, NotServed, clip

SERVER_NAME = "mindserve"
PLATFORM = "mindserve"


class Model:
    """A model name resolved to a servable method (the dispatcher knows its versions)."""

    def __init__(self, dispatcher: Dispatcher, name: str, servable: str, method: str):
        self._dispatcher = dispatcher
        self.name = name
        self.servable = servable
        self.method = method

    def versions(self) -> list[int]:
        return self._dispatcher.versions(self.servable, self.method)

    def served(self, version: int) -> ServedVersion:
        """The version asked for; for 0 the newest with a live worker, else the newest. NOT_FOUND when the
        servable has no such version."""
        return self._dispatcher.version(self.servable, self.method, version, self.name)


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


def find_model(dispatcher: Dispatcher, model_name: str) -> Model:
    """``servable`` (a servable with one method) or ``servable.method``; NOT_FOUND otherwise."""
    servable, method = dispatcher.find_method(model_name)
    return Model(dispatcher, model_name, servable, method)


def served_model(dispatcher: Dispatcher, model_name: str, version_text: str) -> tuple[Model, ServedVersion]:
    """The model and the version of it that ``version_text`` names (see ``Model.served``)."""
    model = find_model(dispatcher, model_name)
    return model, model.served(version_number(model_name, version_text))


def resolve_infer(dispatcher: Dispatcher, model_name: str, version_text: str) -> tuple[Model, Route]:
    """The model, the servable version that runs an inference request and the method's signature: NOT_FOUND for a
    model or version that is not served, ServingError (servable is not available) when it has no live worker."""
    model = find_model(dispatcher, model_name)
    version = version_number(model_name, version_text)
    if version:
        model.served(version)  # NOT_FOUND for a version that is not served, before "not available"
    return model, dispatcher.resolve(model.servable, model.method, version)


def model_ready(dispatcher: Dispatcher, model_name: str, version_text: str) -> Optional[bool]:
    """Whether the model (the version asked for, or any version) has a live worker; None for a model or version
    that is not served (gRPC answers it as not ready, so that clients can poll for it)."""
    version = version_number(model_name, version_text)
    try:
        model = find_model(dispatcher, model_name)
        served = model.served(version)
    except NotServed:
        return None
    return served.ready


def _tensors(names: Sequence[str], specs: Sequence[TensorSpec]) -> list[TensorMetadata]:
    return [
        TensorMetadata(
            name, _dtypes.OIP_NAME_OF.get(spec.dtype, ""), [-1] + (list(spec.shape) if spec.shape is not None else [])
        )
        for name, spec in zip(names, specs)
    ]


def model_metadata(dispatcher: Dispatcher, model_name: str, version_text: str) -> ModelMetadata:
    """What the server knows of the model: its versions, and its inputs and outputs (in the version asked for)."""
    model, served = served_model(dispatcher, model_name, version_text)
    signature = served.methods[model.method]
    return ModelMetadata(
        model_name,
        PLATFORM,
        [str(v) for v in model.versions()],
        _tensors(signature.inputs, signature.input_specs),
        _tensors(signature.outputs, signature.output_specs),
    )


def selected_outputs(requested: list[tuple[str, Mapping]], signature: MethodSignature, model: Model) -> list[str]:
    """The outputs a request asks for, each ``(name, parameters)``; every output, in the method's order, when it
    names none."""
    names = signature.outputs
    if not requested:
        return list(names)
    selected = []
    for name, parameters in requested:
        if name not in names:
            raise InvalidInput(
                f"Cannot find output {clip(name)} in the outputs of servable {model.servable}, method "
                f"{model.method}: {', '.join(names)}"
            )
        if name in selected:
            raise InvalidInput(f"Output {clip(name)} is requested more than once")
        if "classification" in parameters:
            raise InvalidInput(f"Output {clip(name)}: the classification extension is not supported")
        selected.append(name)
    return selected
