"""One MindSpore Serving prediction, whatever transport carried it (gRPC ``MSService.Predict``, REST
``POST /model/...``): the servable version resolved and the request's instance count checked, each instance's
inputs checked on their own (a bad instance fails alone, its error in its place, and the others still run), the
valid instances run, their outcomes merged back in order.

A door decodes its wire form into instances (each a mapping of input names to wire values) and a function that
makes one input's tensor of a wire value; it encodes the outcomes (one dict of outputs or one ServingError per
instance) and maps a whole request's error. Errors are the typed ones of mindserve._errors, with MindSpore
Serving's texts.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._dispatch.route import Route
from mindserve._errors import InvalidInput, ServingError, clip, missing_input, unexpected_input
from mindserve._metrics import requests as request_metrics
from mindserve._tensor import RawTensor

_MISSING = object()

TensorOf = Callable[[str, Any], RawTensor]  # (input name, its wire value) -> the checked tensor
InputsOf = Callable[[int, Any], dict]  # (instance index, the instance) -> its checked inputs


class Checked(NamedTuple):
    """A request's instances checked: ``outcomes`` holds a ServingError for each bad instance and None for the
    others; ``valid`` the inputs of the others, ``valid_index`` their places."""

    outcomes: list
    valid_index: list[int]
    valid: list[dict[str, RawTensor]]


def resolve(dispatcher: Dispatcher, servable: str, method: str, version: int, count: int) -> Route:
    """The route of a request of ``count`` instances; NotServed, NoLiveWorker or InvalidInput (no instance, or
    more than the server takes) for the whole request."""
    route = dispatcher.resolve(servable, method, version)
    if not count:
        raise InvalidInput(
            f"Instances count of request cannot be 0, servable: {clip(servable)}, method: {clip(method)}"
        )
    dispatcher.check_instance_count(count, servable, method)
    return route


def instance_inputs(
    items: Mapping[str, Any], names: Sequence[str], servable: str, method: str, tensor_of: TensorOf
) -> dict[str, RawTensor]:
    """One instance's inputs: each of the method's ``names`` made by ``tensor_of`` from its wire value in
    ``items``; InvalidInput for an input missing or one the method does not take."""
    inputs = {}
    for name in names:
        value = items.get(name, _MISSING)
        if value is _MISSING:
            raise missing_input(name, "instance input", servable, method, names, list(items))
        inputs[name] = tensor_of(name, value)
    if len(items) != len(names):
        extra = next(key for key in items if key not in inputs)
        raise unexpected_input(extra, servable, method, names)
    return inputs


def check_instances(instances: Sequence[Any], inputs_of: InputsOf) -> Checked:
    """Each instance's inputs made by ``inputs_of``; the ServingError it raises fails that instance alone. (Runs
    on a thread for large requests: it touches nothing of the event loop.)"""
    outcomes: list = [None] * len(instances)
    valid_index: list[int] = []
    valid: list[dict[str, RawTensor]] = []
    for i, instance in enumerate(instances):
        try:
            valid.append(inputs_of(i, instance))
            valid_index.append(i)
        except ServingError as err:
            outcomes[i] = err
    return Checked(outcomes, valid_index, valid)


async def run(dispatcher: Dispatcher, route: Route, checked: Checked) -> Sequence:
    """The outcome of each instance, in order: when every instance is valid, the dispatcher's results as they
    come (possibly stacked, see ``Results.stacked``), otherwise as ``merged``."""
    if len(checked.valid) == len(checked.outcomes):
        return await dispatcher.run(route, checked.valid)
    return await merged(dispatcher, route, checked)


async def merged(dispatcher: Dispatcher, route: Route, checked: Checked) -> list:
    """The outcome of each instance, in order, as a list the door may change instance by instance: the valid
    instances run, the bad ones failed by their errors."""
    outcomes, valid_index, valid = checked
    if valid:
        for i, result in zip(valid_index, await dispatcher.run(route, valid)):
            outcomes[i] = result
    request_metrics.note_results(outcomes)  # the bad instances' errors count too (the run noted its own)
    return outcomes
