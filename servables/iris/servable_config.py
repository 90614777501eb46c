"""The iris servable: a logistic regression on the Iris data, answering like Seldon's iris example.

Model (version folder ``1/``): iris_logreg.onnx, exported by example/iris/export_model/train_iris.py, with a
batch dim fixed at 8 rows (the worker stacks instances and pads the last batch).

Methods:
    predict(x)                  -> label, probabilities, puid    puid: a new uuid4 hex per instance
    predict_with_puid(x, puid)  -> label, probabilities, puid    puid: the client's, echoed
    classify(f1, f2, f3, f4)    -> label, probabilities          the measurements one by one

Seldon's Classifier (io.seldon.api.rpc.Classifier/Predict on the gRPC port) is answered by ``classify``: its data
is a google.protobuf.Struct {f1, f2, f3, f4} or Seldon's example IrisPredictRequest (iris.proto), and the reply
names the classes as Seldon's example does (Iris-setosa, Iris-versicolor, Iris-virginica).

    x              4 measurements in cm: sepal length, sepal width, petal length, petal width; any real numeric
                   dtype and any shape holding 4 values ([4], [1, 4], ...); cast to float32
    label          str: 'setosa', 'versicolor' or 'virginica'
    probabilities  float32 [3], in that class order
    puid           str: the prediction id; a client's puid must be a non-empty str
"""
import uuid
from typing import Any

import numpy as np

from mindserve.server import register

CLASS_NAMES = ("setosa", "versicolor", "virginica")  # the model's class indexes 0, 1, 2 (load_iris().target_names)

model = register.declare_model(model_file="iris_logreg.onnx", model_format="ONNX", with_batch_dim=True)


def measurements(x: Any) -> np.ndarray:
    """x as the float32 [4] row the model takes; raises InputError (the client's error) with a text otherwise."""
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iuf":
        kind = f"a numpy array of {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
        raise register.InputError(f"x must be a numeric array of the 4 measurements, got {kind}")
    if x.size != 4:
        raise register.InputError(f"x must hold 4 measurements (sepal length, sepal width, petal length, petal "
                                  f"width in cm), got shape {list(x.shape)}")
    row = x.reshape(4).astype(np.float32)
    if not np.isfinite(row).all():
        raise register.InputError("x must hold finite numbers")
    return row


def measurements_and_puid(x: Any, puid: Any) -> tuple:
    """Checks the client's puid before the model runs, so that a bad one costs no model time. A puid sent as
    bytes (the only text an Open Inference Protocol client can send) is taken as UTF-8."""
    if isinstance(puid, bytes):
        try:
            puid = puid.decode()
        except UnicodeDecodeError:
            raise register.InputError("puid must be UTF-8 text") from None
    if not isinstance(puid, str) or not puid:
        got = repr(puid) if isinstance(puid, str) else type(puid).__name__
        raise register.InputError(f"puid must be a non-empty str, got {got}")
    return measurements(x), puid


def class_name(label: np.ndarray) -> str:
    """The class name of the model's class index."""
    return CLASS_NAMES[int(label)]


def named_with_new_puid(label: np.ndarray, probabilities: np.ndarray) -> tuple:
    """Class name, probabilities and a fresh prediction id for one instance."""
    return class_name(label), probabilities, uuid.uuid4().hex


def named(label: np.ndarray, probabilities: np.ndarray, puid: str) -> tuple:
    """Class name, probabilities and the client's prediction id for one instance."""
    return class_name(label), probabilities, puid


@register.register_method(output_names=["label", "probabilities", "puid"])
def predict(x):
    """Classify one flower; the reply carries a new puid."""
    x = register.add_stage(measurements, x, outputs_count=1)
    label, probabilities = register.add_stage(model, x, outputs_count=2)
    return register.add_stage(named_with_new_puid, label, probabilities, outputs_count=3)


@register.register_method(output_names=["label", "probabilities", "puid"])
def predict_with_puid(x, puid):
    """Classify one flower; the reply carries the client's puid."""
    x, puid = register.add_stage(measurements_and_puid, x, puid, outputs_count=2)
    label, probabilities = register.add_stage(model, x, outputs_count=2)
    return register.add_stage(named, label, probabilities, puid, outputs_count=3)


def features(f1: Any, f2: Any, f3: Any, f4: Any) -> np.ndarray:
    """The four measurements given one by one, as the model's row."""
    for name, value in (("f1", f1), ("f2", f2), ("f3", f3), ("f4", f4)):
        if not isinstance(value, np.ndarray) or value.size != 1:
            raise register.InputError(f"{name} must be one number (a measurement in cm)")
    return measurements(np.concatenate([np.reshape(f, 1) for f in (f1, f2, f3, f4)]))


def named_class(label: np.ndarray, probabilities: np.ndarray) -> tuple:
    """Class name and probabilities for one instance."""
    return class_name(label), probabilities


@register.register_method(output_names=["label", "probabilities"])
def classify(f1, f2, f3, f4):
    """Classify one flower from its four measurements, each a number (Seldon's IrisPredictRequest fields)."""
    x = register.add_stage(features, f1, f2, f3, f4, outputs_count=1)
    label, probabilities = register.add_stage(model, x, outputs_count=2)
    return register.add_stage(named_class, label, probabilities, outputs_count=2)


register.seldon_classifier("classify", classes=("Iris-setosa", "Iris-versicolor", "Iris-virginica"),
                           probabilities="probabilities", request_proto="iris.proto")
