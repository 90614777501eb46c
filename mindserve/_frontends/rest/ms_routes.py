"""MindSpore Serving's RESTful form: ``POST /model/{servable}[/version/{n}]:{method}`` with
``{"instances": [{"x1": ..., "x2": ...}, ...]}`` (or one instance object), answered
``{"instances": [{"y": ...}, ...]}`` through the same dispatcher as MSService, one result or one error per
instance: a failed instance is ``{"error_msg": text}`` in its place (status 200, the others still get
results); a failure of the whole request is ``{"error_msg": text}`` alone, with the status of its kind (404 no
such servable, version or method; 400 a malformed request; 503 no live worker; 429 the queue is full; 413 a body
over the limit). Values and their types: see ``_frontends/mindspore/values.py``. Texts are MSService's.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._errors import InvalidInput, ServingError, clip
from mindserve._frontends.mindspore import predict as ms_predict
from mindserve._frontends.mindspore import values as ms_values
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
        app.router.add_post(
            f"/model/{{servable:{_SEGMENT}}}/version/{{version:{_SEGMENT}}}:{{method:{_SEGMENT}}}", self.predict
        )

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
        route = ms_predict.resolve(self._dispatcher, servable, method, version, len(instances))
        names = route.signature.inputs

        def inputs_of(index: int, instance: Any) -> dict:
            if type(instance) is not dict:
                raise InvalidInput(f"Instance {index} should be a JSON object of input names and values")
            return ms_predict.instance_inputs(instance, names, servable, method, ms_values.to_tensor)

        outcomes = await ms_predict.run(self._dispatcher, route, ms_predict.check_instances(instances, inputs_of))
        stacked = getattr(outcomes, "stacked", None)
        if stacked is not None:
            return {"instances": _stacked(len(outcomes), stacked)}
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
        raise HttpError(
            400,
            "'instances' should be a JSON array of instances (objects of input names and values), or one such object",
        )
    return instances


def _outcome(outcome: Any) -> dict:
    if isinstance(outcome, ServingError):
        return {_KEY: outcome.message}
    return {name: ms_values.to_json(tensor) for name, tensor in outcome.items()}


def _stacked(count: int, outputs: dict[str, StackedOutput]) -> list:
    """Every instance succeeded with stacked outputs: each output made JSON in one pass."""
    columns = {
        name: ms_values.stacked_to_json(out.dtype, tuple(out.row_shape), count, out.data)
        for name, out in outputs.items()
    }
    return [{name: column[i] for name, column in columns.items()} for i in range(count)]
