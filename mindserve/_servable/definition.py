"""The servable registration API behind ``mindserve.server.register``.

A servable_config.py declares models and registers methods. A method is traced once at registration: it is
called with placeholders, each ``add_stage`` records a stage and hands back placeholders for its outputs, and
the placeholders it returns become the method's outputs. The recorded stages are what workers run.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union, cast

from mindserve._backends.options import FORMAT_NAMES, check_options

# model formats declare_model takes, lower case (the user's spelling is case-insensitive: "MindIR", "ONNX")
SUPPORTED_FORMATS = ("onnx", "mindir")


class Placeholder:
    """Stands for a value while a method is traced: method input ``index`` (stage 0) or output ``index`` of
    stage ``stage`` (counted from 1)."""

    __slots__ = ("method", "stage", "index")

    def __init__(self, method: "MethodDefinition", stage: int, index: int):
        self.method = method
        self.stage = stage
        self.index = index

    def __repr__(self) -> str:
        return f"<placeholder of stage {self.stage} output {self.index}>"


class Model:
    """A model declared by ``declare_model``; usable as an ``add_stage`` stage, or through ``call`` inside a
    Python stage while a worker runs the method."""

    def __init__(self, files: tuple[str, ...], model_format: str, with_batch_dim: bool, options: Optional[dict]):
        self.files = files
        self.model_format = model_format
        self.with_batch_dim = with_batch_dim
        # every option of the format: the declared ones and the defaults of the rest (see _backends.options)
        self.options = dict(options or {})
        self.key = ";".join(files)
        # counts fixed by the first add_stage that uses the model; checked against the real model at load
        self.inputs_count: Optional[int] = None
        self.outputs_count: Optional[int] = None
        # set by the worker once the model is loaded: (subgraph, list of instances) -> list of output tuples
        self._runner: Optional[Callable[[int, list], list]] = None

    def call(self, *args: Any, subgraph: int = 0) -> Any:
        """Run the model from a Python stage.

        ``call(x1, x2)`` runs one instance and returns its output (a tuple when the model has several);
        ``call([(x1, x2), (x1, x2)])`` runs several instances and returns one output tuple per instance.
        ``subgraph`` picks the model file of a model declared with several (0: the first).
        """
        if isinstance(subgraph, bool) or not isinstance(subgraph, int):
            raise RuntimeError(
                f"Model({self.key}).call() failed: parameter 'subgraph' should be int, but actually {type(subgraph)}"
            )
        if subgraph < 0:
            raise RuntimeError(
                f"Model({self.key}).call() failed: parameter 'subgraph' should be >= 0, but actually {subgraph}"
            )
        if subgraph >= len(self.files):
            raise RuntimeError(
                f"Model({self.key}).call() failed: The model does not have subgraph of index "
                f"{subgraph}, the subgraph count of the model is {len(self.files)}"
            )
        if not args:
            raise RuntimeError(
                f"Model({self.key}).call() failed: no inputs provided, the inputs can be call(x1, x2) for single "
                f"instance or call([[x1, x2], [x1, x2]]) for multi instances."
            )
        if self._runner is None:
            raise RuntimeError(
                f"Model({self.key}).call() failed: the model is not loaded, Model.call can only be used in a stage "
                f"run by a serving worker"
            )
        if len(args) == 1 and isinstance(args[0], (list, tuple)):
            instances = args[0]
            for item in instances:
                if not isinstance(item, (list, tuple)):
                    raise RuntimeError(
                        f"Model({self.key}).call() failed: inputs format invalid, the inputs can be call(x1, x2) "
                        f"for single instance or call([[x1, x2], [x1, x2]]) for multi instances."
                    )
            return tuple(self._runner(subgraph, [tuple(item) for item in instances]))
        outputs = self._runner(subgraph, [args])[0]
        return outputs[0] if len(outputs) == 1 else outputs

    def __repr__(self) -> str:
        return f"Model({self.key})"


@dataclass
class StageDefinition:
    """One recorded ``add_stage``: a Python function or a declared model, with its argument placeholders."""

    target: Union[Callable, Model]
    args: list[Placeholder]
    outputs_count: int
    batch_size: Optional[int]
    tag: str  # how error texts name the stage: "Function 'add.cast'" or "Model 'tensor_add.onnx'"

    @property
    def is_model(self) -> bool:
        return isinstance(self.target, Model)

    @property
    def model(self) -> Model:
        """The declared model of a model stage (``is_model``)."""
        return cast(Model, self.target)

    @property
    def function(self) -> Callable:
        """The Python function of a function stage (not ``is_model``)."""
        return cast(Callable, self.target)


@dataclass
class MethodDefinition:
    name: str
    input_names: list[str]
    output_names: list[str]
    stages: list[StageDefinition] = field(default_factory=list)
    outputs: list[Placeholder] = field(default_factory=list)


class InputError(ValueError):
    """Raised by a stage for a bad client input (a value out of range, a malformed image): the request is answered
    as the client's error (gRPC INVALID_ARGUMENT, HTTP 400, an MSService per-instance error with code 2) with
    the stage's text. Any other exception a stage raises is a failure of the servable (INTERNAL, HTTP 500)."""


class ServableDefinition:
    """Everything one servable_config.py declared: its models and methods."""

    def __init__(self, name: str = ""):
        self.name = name
        self.models: list[Model] = []
        self.methods: dict[str, MethodDefinition] = {}
        self._used_files: set[str] = set()
        self._tracing: Optional[MethodDefinition] = None
        self.seldon: Any = None  # a seldon.SeldonClassifier, when servable_config.py declares one
        self.version_folder: Optional[str] = None  # the version this process serves (set before the import)


_current = ServableDefinition()


def begin_servable(name: str) -> ServableDefinition:
    """Start collecting the declarations of servable ``name`` (called before importing its config)."""
    global _current
    _current = ServableDefinition(name)
    return _current


def current_servable() -> ServableDefinition:
    return _current


def version_path() -> str:
    """The folder of the servable version this worker serves (``<servable_directory>/<name>/<version>``), for
    files a stage reads that belong to one version (a scaler's parameters, a vocabulary, class names). Callable
    in servable_config.py itself and in stages."""
    folder = _current.version_folder
    if folder is None:
        raise RuntimeError(
            "version_path(): no servable version is being served here (it is known in a worker, "
            "for a servable with version folders)"
        )
    return folder


def _check_str_list(arg_name: str, value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise RuntimeError(f"Parameter '{arg_name}' should be str or tuple/list of str, but actually {type(value)}")
    for item in items:
        if not isinstance(item, str):
            raise RuntimeError(f"The item of parameter '{arg_name}' should be str, but actually {type(item)}")
        if not item:
            raise RuntimeError(f"The item of parameter '{arg_name}' should not be empty str")
    seen: set[str] = set()
    for item in items:
        if item in seen:
            raise RuntimeError(f"The item value '{item}' in parameter '{arg_name}' should not be repeated")
        seen.add(item)
    return list(items)


def declare_model(
    model_file: Union[str, Sequence[str]],
    model_format: str,
    with_batch_dim: bool = True,
    options: Optional[dict] = None,
) -> Model:
    """Declare the model file(s) of this servable, found in each version directory.

    ``model_format`` is ``"ONNX"`` (ONNX Runtime) or ``"MindIR"`` (MindSpore), case ignored. With
    ``with_batch_dim=True`` dim 0 of every input and output is the batch: instances are stacked into batches of
    the model's batch size. Several files make one model with several subgraphs: ``add_stage`` runs the first,
    ``Model.call(..., subgraph=i)`` any. ``options`` is a dict of per-model runtime options (``thread_num``,
    ``precision_mode``, ...; see ``mindserve._backends.options``), checked here.
    """
    servable = _current
    files = _check_str_list("model_file", model_file)
    if not files:
        raise RuntimeError("Declare model failed, model files size cannot be 0")
    if not isinstance(model_format, str) or model_format.lower() not in SUPPORTED_FORMATS:
        raise RuntimeError(
            f"model format can only be {' or '.join(FORMAT_NAMES[f] for f in SUPPORTED_FORMATS)}, "
            f"case ignored, but given {model_format!r}"
        )
    if not isinstance(with_batch_dim, bool):
        raise RuntimeError(f"Parameter 'with_batch_dim' should be bool, but actually {type(with_batch_dim)}")
    if options is not None and not isinstance(options, dict):
        raise RuntimeError(f"Parameter 'options' should be dict, but actually {type(options)}")
    for file in files:
        if file in servable._used_files:
            raise RuntimeError(f"Declare model {';'.join(files)} failed, model file '{file}' has already been used")
    try:
        options = check_options(model_format.lower(), options)
    except ValueError as exc:
        raise RuntimeError(f"Declare model {';'.join(files)} failed, {exc}") from None
    servable._used_files.update(files)
    model = Model(tuple(files), model_format.lower(), with_batch_dim, options)
    servable.models.append(model)
    return model


def register_method(output_names: Union[str, Sequence[str]]) -> Callable[[Callable], Callable]:
    """Register the decorated function as a method of this servable, answering with ``output_names``.

    The function's parameters are the method's input names. It is called once, at registration, with
    placeholders: its body chains ``add_stage`` calls and returns the placeholders of the outputs.
    """
    names = _check_str_list("output_names", output_names)

    def decorate(func: Callable) -> Callable:
        servable = _current
        method_name = func.__name__
        input_names = []
        for index, param in enumerate(inspect.signature(func).parameters.values()):
            if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                raise RuntimeError(f"'{method_name}' input {param.name} cannot be {param.kind.name} !")
            input_names.append(param.name)
        if method_name in servable.methods:
            raise RuntimeError(f"Method {method_name} has been registered more than once.")
        method = MethodDefinition(method_name, input_names, names)
        servable._tracing = method
        try:
            returned = func(*[Placeholder(method, 0, i) for i in range(len(input_names))])
        finally:
            servable._tracing = None
        returned = returned if isinstance(returned, tuple) else (returned,)
        for item in returned:
            if not isinstance(item, Placeholder) or item.method is not method:
                raise RuntimeError(
                    f"Method '{method_name}': each value returned is a placeholder for data and must come from the "
                    f"method inputs or the outputs of add_stage"
                )
        if len(returned) != len(names):
            raise RuntimeError(
                f"Method return output size {len(returned)} not match registered {len(names)}, method '{method_name}'"
            )
        method.outputs = list(returned)
        servable.methods[method_name] = method
        return func

    return decorate


def _positional_count(func: Callable) -> Optional[int]:
    """How many positional arguments ``func`` takes; None when it takes any number (*args)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def add_stage(
    stage: Union[Callable, Model],
    *args: Placeholder,
    outputs_count: int,
    batch_size: Optional[int] = None,
    tag: Optional[str] = None,
) -> Union[Placeholder, tuple]:
    """Add a stage to the method being registered and return placeholders for its outputs.

    ``stage`` is a Python function or a Model from ``declare_model``; ``args`` are placeholders (method inputs
    or outputs of earlier stages). A function with ``batch_size=None`` is called once per instance with the
    inputs as arguments; with ``batch_size=0`` (all instances at once) or ``N`` it is called with a list of
    instances, each a tuple of inputs, and returns or yields one output tuple per instance, or an exception
    for an instance that fails alone (the list may hold instances of several requests).
    """
    servable = _current
    method = servable._tracing
    if method is None:
        raise RuntimeError("add_stage can only be called inside a function decorated by register_method")
    for arg in args:
        if not isinstance(arg, Placeholder) or arg.method is not method:
            raise RuntimeError(
                f"Method '{method.name}': each value of parameter *args is a placeholder for data and must come from "
                f"the method inputs or the outputs of add_stage"
            )
    if isinstance(outputs_count, bool) or not isinstance(outputs_count, int) or outputs_count < 1:
        raise RuntimeError(
            f"Method '{method.name}': parameter 'outputs_count' should be an int >= 1, but actually {outputs_count!r}"
        )
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0):
        raise RuntimeError(
            f"Method '{method.name}': parameter 'batch_size' should be None or an int >= 0, but actually {batch_size!r}"
        )
    if isinstance(stage, Model):
        if stage not in servable.models:
            raise RuntimeError(
                f"Check failed in method '{method.name}', the parameter 'stage' of add_stage must be function or Model "
                f"returned by declare_model, and ensure that interface 'declare_model' can take effect when importing "
                f"servable_config.py by the serving server"
            )
        for what, old, new in (
            ("inputs", stage.inputs_count, len(args)),
            ("outputs", stage.outputs_count, outputs_count),
        ):
            if old is not None and old != new:
                raise RuntimeError(
                    f"Method '{method.name}': {what} count {new} of model {stage.key} not match the "
                    f"count {old} used by an earlier add_stage"
                )
        stage.inputs_count, stage.outputs_count = len(args), outputs_count
        stage_tag = tag or f"Model '{stage.key}'"
    elif callable(stage):
        if batch_size is None:
            expected = _positional_count(stage)
            if expected is not None and expected != len(args):
                raise RuntimeError(
                    f"function {stage.__name__} input args count {expected} not match the count "
                    f"{len(args)} registered in method '{method.name}'"
                )
        stage_tag = f"Function '{tag or servable.name + '.' + getattr(stage, '__name__', 'function')}'"
    else:
        raise RuntimeError(
            f"Check failed in method '{method.name}', the parameter 'stage' of add_stage must be function or Model "
            f"returned by declare_model, now is {type(stage)}"
        )
    method.stages.append(StageDefinition(stage, list(args), outputs_count, batch_size, stage_tag))
    index = len(method.stages)
    outputs = tuple(Placeholder(method, index, i) for i in range(outputs_count))
    return outputs[0] if outputs_count == 1 else outputs
