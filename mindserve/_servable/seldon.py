"""How a servable answers Seldon's ``io.seldon.api.rpc.Classifier/Predict``: which method classifies, the class
names of its probabilities, and the .proto file of the request messages it takes besides a Struct.

Example (servable_config.py)::

    register.seldon_classifier("classify", classes=("Iris-setosa", "Iris-versicolor", "Iris-virginica"),
                               probabilities="probabilities", request_proto="iris.proto")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from mindserve._servable.definition import _check_str_list, current_servable


@dataclass(frozen=True)
class SeldonClassifier:
    """A servable's answer to Seldon's Classifier (see ``seldon_classifier``)."""

    method: str
    classes: tuple[str, ...]
    probabilities: str
    request_proto: Optional[str] = None  # relative to the servable's folder

    def report(self, servable_folder: str) -> dict[str, Any]:
        """What a worker tells the master of it (the .proto as an absolute path)."""
        return {
            "method": self.method,
            "classes": list(self.classes),
            "probabilities": self.probabilities,
            "request_proto": os.path.join(servable_folder, self.request_proto) if self.request_proto else None,
        }


def seldon_classifier(
    method: str, classes: Sequence[str], probabilities: str, request_proto: Optional[str] = None
) -> None:
    """Answer Seldon's Classifier/Predict (on the gRPC port) with ``method`` of this servable.

    The request's ``data`` (a ``google.protobuf.Any``) holds a ``google.protobuf.Struct`` whose fields are the
    method's inputs, or a message of a type that ``request_proto`` (a .proto file in the servable's folder,
    compiled at start; needs ``pip install 'mindserve[seldon]'``) declares, whose fields are the inputs by name.
    The reply has one prediction per class: ``predictedClass`` from ``classes`` (in the order of the model's
    class indexes), ``prediction`` and ``confidence`` the class's value in the output ``probabilities``.
    """
    servable = current_servable()
    if servable.seldon is not None:
        raise RuntimeError("seldon_classifier is called twice: a servable answers Seldon's Classifier with one method")
    for arg, value in (("method", method), ("probabilities", probabilities)):
        if not isinstance(value, str) or not value:
            raise RuntimeError(f"Parameter '{arg}' should be a non-empty str, but actually {value!r}")
    names = _check_str_list("classes", list(classes) if isinstance(classes, tuple) else classes)
    if not names:
        raise RuntimeError("Parameter 'classes' should name at least one class")
    if request_proto is not None and (not isinstance(request_proto, str) or not request_proto.endswith(".proto")):
        raise RuntimeError(
            f"Parameter 'request_proto' should be the name of a .proto file in the servable's "
            f"folder, but actually {request_proto!r}"
        )
    servable.seldon = SeldonClassifier(method, tuple(names), probabilities, request_proto)


def check_seldon(servable: Any, servable_folder: str) -> None:
    """Once servable_config.py has run: the declared method and output exist, and so does the .proto file."""
    declared: Optional[SeldonClassifier] = servable.seldon
    if declared is None:
        return
    method = servable.methods.get(declared.method)
    if method is None:
        raise RuntimeError(
            f"seldon_classifier: method '{declared.method}' is not registered; the methods are "
            f"{', '.join(servable.methods) or '(none)'}"
        )
    if declared.probabilities not in method.output_names:
        raise RuntimeError(
            f"seldon_classifier: method '{declared.method}' has no output "
            f"'{declared.probabilities}'; its outputs are {', '.join(method.output_names)}"
        )
    if declared.request_proto and not os.path.isfile(os.path.join(servable_folder, declared.request_proto)):
        raise RuntimeError(
            f"seldon_classifier: request_proto file "
            f"'{os.path.join(servable_folder, declared.request_proto)}' does not exist"
        )
