"""One Open Inference Protocol inference, whatever transport carried it (gRPC ModelInfer, REST /infer): the model
resolved to a route, the requested outputs selected, the inputs cut into instances, the dispatcher run, the
outputs stacked. Errors are the typed ones of mindserve._errors; each transport maps them."""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._frontends.oip import models, tensors


class Inference(NamedTuple):
    """What an inference answers: the version that ran it and the selected outputs, each stacked."""

    served_version: int
    outputs: list[tensors.OutputTensor]


async def infer(dispatcher: Dispatcher, model_name: str, version_text: str,
                inputs: Callable[[], Sequence[tensors.InputTensor]],
                requested_outputs: list[tuple[str, Mapping]]) -> Inference:
    """Run an inference request. ``inputs`` makes the request's input tensors: it is called once the model and
    the outputs are known good, so that a request for an unknown model is answered NOT_FOUND whatever its
    inputs hold."""
    model, route = models.resolve_infer(dispatcher, model_name, version_text)
    selected = models.selected_outputs(requested_outputs, route.signature, model)
    items = tensors.instances(model, route.signature, inputs(), dispatcher.max_request_instances)
    results = await tensors.run(dispatcher, route, items)
    return Inference(route.served_version, [tensors.stack_output(name, results) for name in selected])
