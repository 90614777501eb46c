"""MindSpore Serving's RESTful form: ``POST /model/{servable}[/version/{n}]:{method}`` with
``{"instances": [{"x1": ..., "x2": ...}, ...]}`` (or one instance object), answered
``{"instances": [{"y": ...}, ...]}`` through the same dispatcher as MSService, one result or one error per
instance: a failed instance is ``{"error_msg": text}`` in its place (status 200, the others still get
results); a failure of the whole request is ``{"error_msg": text}`` alone, with the status of its kind (404 no
such servable, version or method; 400 a malformed request; 503 no live worker; 429 the queue is full; 413 a body
over the limit). Values and their types: see ``ms_values``. Texts are MSService's.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from aiohttp import web

from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._errors import InvalidInput, ServingError, clip, unexpected_input
from mindserve._frontends.rest import ms_values
from mindserve._frontends.rest.common import (
    HttpError,
    answers_errors,
    check_content_type,
    json_response,
    parse_json,
    read_body,
)
from mindserve._tensor import StackedOutput

log = logging.getLogger("mindserve")

_KEY = "error_msg"
_SEGMENT = "[^/:]+"


class MindSporeRoutes:
    def __init__(self, dispatcher: Dispatcher, limit: int):
        self._dispatcher = dispatcher
        self._limit = limit

    def add_to(self, app: web.Application) -> None:
        app.router.add_post(f"/model/{{servable:{_SEGMENT}}}:{{method:{_SEGMENT}}}", self.predict)
        app.router.add_post(f"/model/{{servable:{_SEGMENT}}}/version/{{version:{_SEGMENT}}}:{{method:{_SEGMENT}}}",
                            self.predict)

    @answers_errors("Predict", _KEY)
    async def predict(self, request: web.Request) -> web.Response:
        return json_response(await self._predict(request))

    async def _predict(self, request: web.Request) -> dict:
        info = request.match_info
        servable, method = info["servable"], info["method"]
        version = _version(info.get("version"))
        check_content_type(request)
        document = parse_json(await read_body(request, self._limit))
        instances = _instances(document)
        route = self._dispatcher.resolve(servable, method, version)
        if not instances:
            raise InvalidInput(f"Instances count of request cannot be 0, servable: {clip(servable)}, "
                               f"method: {clip(method)}")
        self._dispatcher.check_instance_count(len(instances), servable, method)
        outcomes: list = [None] * len(instances)
        valid_index, valid = [], []
        for i, instance in enumerate(instances):
            try:
                valid.append(_inputs(i, instance, route.signature.inputs, servable, method))
                valid_index.append(i)
            except ServingError as err:
                outcomes[i] = err
        if valid:
            results = await self._dispatcher.run(route, valid)
            if results.stacked is not None and len(valid) == len(outcomes):
                return {"instances": _stacked(len(results), results.stacked)}
            for i, result in zip(valid_index, results):
                outcomes[i] = result
        return {"instances": [_outcome(o) for o in outcomes]}


def _version(text: Any) -> int:
    if text is None:
        return 0
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise HttpError(400, f"Version '{clip(text)}' in the URL is not a version number")
    return int(text)


def _instances(document: Any) -> list:
    if type(document) is not dict or "instances" not in document:
        raise HttpError(400, "The request should be a JSON object with the key 'instances'")
    for key in document:
        if key != "instances":
            raise HttpError(400, f"The request has the unknown key '{clip(key)}': it takes only 'instances'")
    instances = document["instances"]
    if type(instances) is dict:
        return [instances]  # one instance, as MindSpore Serving takes it
    if type(instances) is not list:
        raise HttpError(400, "'instances' should be a JSON array of instances (objects of input names and values), "
                             "or one such object")
    return instances


def _inputs(index: int, instance: Any, names: Sequence[str], servable: str, method: str) -> dict:
    if type(instance) is not dict:
        raise InvalidInput(f"Instance {index} should be a JSON object of input names and values")
    inputs = {}
    for name in names:
        if name not in instance:
            raise InvalidInput(f"Cannot find input {name} in instance input , servable {servable}, "
                               f"method {method}")
        inputs[name] = ms_values.to_tensor(name, instance[name])
    if len(instance) != len(names):
        extra = next(key for key in instance if key not in inputs)
        raise unexpected_input(extra, servable, method, names)
    return inputs


def _outcome(outcome: Any) -> dict:
    if isinstance(outcome, ServingError):
        return {_KEY: outcome.message}
    return {name: ms_values.to_json(tensor) for name, tensor in outcome.items()}


def _stacked(count: int, outputs: dict[str, StackedOutput]) -> list:
    """Every instance succeeded with stacked outputs: each output made JSON in one pass."""
    columns = {name: ms_values.stacked_to_json(out.dtype, tuple(out.row_shape), count, out.data)
               for name, out in outputs.items()}
    return [{name: column[i] for name, column in columns.items()} for i in range(count)]
