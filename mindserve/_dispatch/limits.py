"""Bounds every request is held to, the same on every protocol, so that the cost of a request follows the bytes a
client sent and no single request can stall the master or kill a worker.

- ``MAX_TENSOR_DIMS``: a tensor as the client sends it has at most this many dimensions (an MSService instance
  tensor, an Open Inference Protocol input with its dim 0, a nested JSON array or a b64 shape). numpy, which
  workers and runtimes use, refuses arrays of more than 32 (64 from numpy 2) dimensions, and a worker adds one
  for the instances it stacks; 16 leaves room and is more than models take.
- the instance count of a request: at most ``max_request_instances`` (``DEFAULT_MAX_REQUEST_INSTANCES`` unless
  ``server.context.set_max_request_instances`` says otherwise). Instances whose tensors hold no elements cost no
  request bytes but each one costs work in the master and the worker, so their number is bounded before anything
  is made of them.
"""

from __future__ import annotations

from mindserve import _defaults
from mindserve._errors import InvalidInput, ServingError, clip

MAX_TENSOR_DIMS = 16
DEFAULT_MAX_REQUEST_INSTANCES = _defaults.MAX_REQUEST_INSTANCES


def too_many_dims(name: str, ndims: int) -> ServingError:
    """The error for a tensor of input ``name`` with ``ndims`` dimensions, more than MAX_TENSOR_DIMS."""
    return InvalidInput(
        f"Instances input {clip(name)} check failed, detail: Tensor check failed: "
        f"input shape has {ndims} dimensions, more than the limit {MAX_TENSOR_DIMS}"
    )


def check_tensor_dims(name: str, ndims: int) -> None:
    """Refuse a tensor of input ``name`` with more than MAX_TENSOR_DIMS dimensions."""
    if ndims > MAX_TENSOR_DIMS:
        raise too_many_dims(name, ndims)


def too_many_instances(count: int, limit: int, servable: str, method: str) -> ServingError:
    """The error for a request of ``count`` instances, more than ``limit``."""
    return InvalidInput(
        f"Instances count {count} of request exceeds the limit {limit}, servable: "
        f"{clip(servable)}, method: {clip(method)}"
    )
