"""One Open Inference Protocol inference, whatever transport carried it (gRPC ModelInfer, REST /infer): the model
resolved to a route, the requested outputs selected, the inputs cut into instances, the dispatcher run, the
outputs stacked. Errors are the typed ones of mindserve._errors; each transport maps them."""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

from mindserve._dispatch import deadlines
from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._errors import InvalidInput, clip
from mindserve._frontends.oip import models, tensors
from mindserve._frontends.shared_memory.regions import Lease
from mindserve._frontends.shared_memory.tensors import large_reads, output_references, write_output


class Inference(NamedTuple):
    """What an inference answers: the version that ran it and the selected outputs, each stacked."""

    served_version: int
    outputs: list[tensors.OutputTensor]


TIMEOUT = "timeout"  # KServe's / Triton's request parameter: microseconds the request may wait (tritonclient's
# infer(timeout=)); work not started by then is dropped and the request answered DEADLINE_EXCEEDED


def timeout_seconds(parameters: Mapping[str, Any]) -> Optional[float]:
    """The request's ``timeout`` parameter in seconds (None when it has none); InvalidInput for anything but a
    non-negative integer of microseconds."""
    if TIMEOUT not in parameters:
        return None
    value = parameters[TIMEOUT]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(
            f"The request parameter 'timeout' should be a non-negative integer of microseconds, got {clip(repr(value))}"
        )
    return value / 1e6


async def infer(
    dispatcher: Dispatcher,
    model_name: str,
    version_text: str,
    inputs: Callable[[], Sequence[tensors.InputTensor]],
    requested_outputs: list[tuple[str, Mapping]],
    lease: Optional[Lease] = None,
    timeout: Optional[float] = None,
) -> Inference:
    """Run an inference request. ``inputs`` makes the request's input tensors: it is called once the model and
    the outputs are known good, so that a request for an unknown model is answered NOT_FOUND whatever its
    inputs hold. Outputs whose parameters name a shared memory region are written there (``lease`` holds the
    request's regions; None: the server takes no client shared memory); inputs that read a megabyte or more of
    shared memory are made on the lease's threads, off the event loop."""
    model, route = models.resolve_infer(dispatcher, model_name, version_text)
    selected = models.selected_outputs(requested_outputs, route.signature, model)
    shared = output_references(lease, requested_outputs)
    made = inputs()
    if lease is not None and lease.off_loop is not None and large_reads(made):  # a thread reads clients' memory
        items = await lease.off_loop.run(
            tensors.instances, model, route.signature, made, dispatcher.max_request_instances
        )
    else:
        items = tensors.instances(model, route.signature, made, dispatcher.max_request_instances)
    token = deadlines.narrow(timeout)  # (``timeout``: seconds, the request's own bound within its transport's)
    try:
        results = await tensors.run(dispatcher, route, items)
    finally:
        deadlines.reset(token)
    outputs = [tensors.stack_output(name, results) for name in selected]
    return Inference(
        route.served_version, [write_output(out, *shared[out.name]) if out.name in shared else out for out in outputs]
    )
