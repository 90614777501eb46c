"""One Seldon classification, whatever carries it: the servable that answers Seldon's Classifier, the request's
data as its method's inputs, the method run, and the reply: one prediction per class, its name from the
servable's ``classes`` and its value from the ``probabilities`` output, the request's puid echoed (a new one
of 40 hex digits when it has none), ``modelName`` the servable and ``variation`` "default"."""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np

from mindserve import _dtypes
from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._dispatch.route import ServedVersion
from mindserve._errors import NotServed, StageFailed
from mindserve._frontends.seldon.request_data import inputs_of, request_types
from mindserve._proto import seldon as pb

VARIATION = "default"


def classifier(dispatcher: Dispatcher) -> ServedVersion:
    """The servable (its newest version) that answers Seldon's Classifier: the one that declares it."""
    declaring = {v.name: v for v in sorted(dispatcher.served(), key=lambda v: v.version) if v.seldon}
    if not declaring:
        raise NotServed(
            "No servable answers Seldon's Classifier: a servable declares it in servable_config.py "
            "with register.seldon_classifier(...)"
        )
    if len(declaring) > 1:
        raise NotServed(
            f"Several servables answer Seldon's Classifier ({', '.join(sorted(declaring))}): serve "
            f"one of them on this server"
        )
    return next(iter(declaring.values()))


async def classify(dispatcher: Dispatcher, request: Any) -> Any:
    """The ClassificationReply to a ClassificationRequest."""
    served = classifier(dispatcher)
    declared = served.seldon or {}
    method = declared["method"]
    route = dispatcher.resolve(served.name, method, 0)
    types = request_types(declared["request_proto"]) if declared.get("request_proto") else None
    inputs = inputs_of(request.data, route.signature.inputs, types, served.name, method)
    results = await dispatcher.run(route, [inputs])
    error = results.first_error()
    if error is not None:
        raise error
    probabilities = _probabilities(results[0][declared["probabilities"]], declared)
    reply = pb.ClassificationReply()
    reply.meta.puid = request.meta.puid or secrets.token_hex(20)
    reply.meta.modelName = served.name
    reply.meta.variation = VARIATION
    for name, value in zip(declared["classes"], probabilities):
        reply.predictions.add(prediction=value, predictedClass=name, confidence=value)
    return reply


def _probabilities(tensor: Any, declared: dict) -> list[float]:
    """The output as one float per class; StageFailed (a servable defect) when it is not."""
    classes = declared["classes"]
    dtype = _dtypes.NUMPY_OF.get(tensor.dtype)
    if dtype is None or dtype.kind != "f":
        raise StageFailed(
            f"Output {declared['probabilities']} of method {declared['method']} is not a float "
            f"tensor: Seldon's Classifier needs one probability per class"
        )
    values = np.frombuffer(tensor.data, dtype).ravel()
    if values.size != len(classes):
        raise StageFailed(
            f"Output {declared['probabilities']} of method {declared['method']} holds {values.size} "
            f"values for {len(classes)} classes"
        )
    return [float(v) for v in values]
