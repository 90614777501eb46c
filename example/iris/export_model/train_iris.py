"""Trains the iris servable's classifier and writes servables/iris/1/iris_logreg.onnx.

A scikit-learn LogisticRegression (multinomial, lbfgs) fitted on all 150 samples of the Iris data that
scikit-learn ships, converted to ONNX by skl2onnx. The ONNX model has a fixed batch of 8 rows:

    x              float32 [8, 4]   sepal length, sepal width, petal length, petal width (cm)
    label          int64   [8]      class index: 0 setosa, 1 versicolor, 2 virginica
    probabilities  float32 [8, 3]   class probabilities

The batch is fixed because ONNX Runtime computes a single row through another kernel than a batch of rows,
and the last bits of the probabilities differ between the two; with a fixed batch every instance goes through
the same kernel however the server groups instances (it pads the last batch), so answers are reproducible.
lbfgs on fixed data is deterministic, so every run writes the same file.

    pip install 'mindserve[export]'
    python example/iris/export_model/train_iris.py [OUTPUT_PATH]
"""
import os
import sys

import numpy as np
import onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "..", "..", "..", "servables", "iris", "1", "iris_logreg.onnx")
BATCH_SIZE = 8


def train() -> tuple[LogisticRegression, float]:
    """The fitted classifier and its accuracy on the data it was fitted on."""
    data = load_iris()
    x = data.data.astype(np.float32)
    classifier = LogisticRegression(max_iter=1000).fit(x, data.target)
    return classifier, float(classifier.score(x, data.target))


def to_onnx_model(classifier: LogisticRegression) -> onnx.ModelProto:
    """The classifier as ONNX: probabilities as a plain tensor (no ZipMap of dicts), fixed batch dim."""
    model = to_onnx(classifier, initial_types=[("x", FloatTensorType([BATCH_SIZE, 4]))],
                    options={id(classifier): {"zipmap": False}}, target_opset=15)
    # skl2onnx lists the default domain twice; keep one entry per domain so that strict loaders accept it
    unique = {(o.domain, o.version) for o in model.opset_import}
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in sorted(unique))
    model.producer_name = "mindserve"
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    path = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUTPUT)
    fitted, accuracy = train()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(to_onnx_model(fitted), path)
    print(f"training accuracy {accuracy:.4f}; wrote {path}")
