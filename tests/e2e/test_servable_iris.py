"""The bundled iris servable, served by its example script: labels and probabilities exactly as ONNX Runtime
computes them in this process from the same model file, prediction ids, input handling and errors."""

from __future__ import annotations

import os
import re
import uuid

import numpy as np
import onnxruntime
import pytest
from sklearn.datasets import load_iris

from mindserve.client import Client
from support.examples import run_example_client, start_example_server
from support.paths import BUNDLED_SERVABLES
from support.processes import free_port

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

MODEL_FILE = os.path.join(BUNDLED_SERVABLES, "iris", "1", "iris_logreg.onnx")
MODEL_BATCH = 8  # the model's fixed batch dim
CLASS_NAMES = ["setosa", "versicolor", "virginica"]
STAGE_ERROR = "Call Function 'iris.{stage}' Failed, method: '{method}', stage index(begin with 1): 1, error msg: "


@pytest.fixture(scope="module")
def iris_address(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("iris")
    server = start_example_server(tmp, "iris", f"127.0.0.1:{free_port()}")
    yield server.address
    assert server.stop() == 0, server.output


@pytest.fixture(scope="module")
def reference():
    """(label names, probabilities) for float32 rows, by ONNX Runtime in this process: one thread like the
    workers, rows run in zero-padded batches of the model's 8 (each row's result does not depend on the others)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(MODEL_FILE, options, providers=["CPUExecutionProvider"])

    def run(rows: np.ndarray) -> tuple[list[str], np.ndarray]:
        labels, probabilities = [], []
        for start in range(0, len(rows), MODEL_BATCH):
            chunk = rows[start : start + MODEL_BATCH]
            padded = np.zeros((MODEL_BATCH, 4), np.float32)
            padded[: len(chunk)] = chunk
            label, probability = session.run(["label", "probabilities"], {"x": padded})
            labels += [CLASS_NAMES[i] for i in label[: len(chunk)]]
            probabilities.append(probability[: len(chunk)])
        return labels, np.concatenate(probabilities)

    return run


def _is_uuid4_hex(text: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{32}", text)) and uuid.UUID(hex=text).version == 4


def test_predict_all_flowers_in_requests_of_several_sizes(iris_address, reference):
    data = load_iris()
    rows = data.data.astype(np.float32)
    labels, probabilities = reference(rows)
    client = Client(iris_address, "iris", "predict")
    served, start = [], 0
    for size in (1, 7, 8, 9, 125):  # 150 in all; sizes around the model batch of 8
        served += client.infer([{"x": row} for row in rows[start : start + size]])
        start += size
    assert len(served) == 150
    for i, item in enumerate(served):
        assert sorted(item) == ["label", "probabilities", "puid"], item
        assert item["label"] == labels[i]
        assert item["probabilities"].dtype == np.float32 and item["probabilities"].shape == (3,)
        np.testing.assert_array_equal(item["probabilities"], probabilities[i])
        assert _is_uuid4_hex(item["puid"]), item["puid"]
    assert len({item["puid"] for item in served}) == 150
    # the committed model fits the data: at least 95% of the 150 flowers get their species
    assert sum(item["label"] == CLASS_NAMES[t] for item, t in zip(served, data.target)) >= 0.95 * 150


def test_predict_with_puid_echoes_the_clients_ids(iris_address, reference):
    rows = load_iris().data.astype(np.float32)[::10]
    labels, probabilities = reference(rows)
    puids = [f"flower-{i}" for i in range(len(rows))]
    puids[3] = "fleur-ü-\u82b1"  # any str, not only ASCII
    result = Client(iris_address, "iris", "predict_with_puid").infer(
        [{"x": row, "puid": puid} for row, puid in zip(rows, puids)]
    )
    assert [item["puid"] for item in result] == puids
    assert [item["label"] for item in result] == labels
    np.testing.assert_array_equal(np.stack([item["probabilities"] for item in result]), probabilities)


def test_x_of_other_numeric_types_and_shapes_is_cast_to_float32(iris_address, reference):
    values = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.2, 4.0, 1.0], [6.3, 3.3, 6.0, 2.5]]
    given = [
        np.array(values[0], np.float64),
        np.array(values[1], np.float64).reshape(1, 4),
        np.array([6, 3, 6, 2], np.int64),
    ]
    labels, probabilities = reference(np.array([values[0], values[1], [6, 3, 6, 2]], np.float32))
    result = Client(iris_address, "iris", "predict").infer([{"x": x} for x in given])
    assert [item["label"] for item in result] == labels == ["setosa", "versicolor", "virginica"]
    for item, expected in zip(result, probabilities):
        np.testing.assert_array_equal(item["probabilities"], expected)


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            {"x": np.ones(3, np.float32), "puid": "a"},
            "x must hold 4 measurements (sepal length, sepal width, petal length, petal width in cm), got shape [3]",
        ),
        (
            {"x": np.ones((2, 4), np.float32), "puid": "a"},
            "x must hold 4 measurements (sepal length, sepal width, petal length, petal width in cm), got shape [2, 4]",
        ),
        ({"x": "5.1, 3.5, 1.4, 0.2", "puid": "a"}, "x must be a numeric array of the 4 measurements, got str"),
        (
            {"x": np.ones(4, bool), "puid": "a"},
            "x must be a numeric array of the 4 measurements, got a numpy array of bool",
        ),
        ({"x": np.array([5.1, np.nan, 1.4, 0.2]), "puid": "a"}, "x must hold finite numbers"),
        ({"x": np.ones(4, np.float32), "puid": b"\xff"}, "puid must be UTF-8 text"),
        ({"x": np.ones(4, np.float32), "puid": 3}, "puid must be a non-empty str, got ndarray"),
        ({"x": np.ones(4, np.float32), "puid": ""}, "puid must be a non-empty str, got ''"),
    ],
)
def test_bad_instance_fails_alone_with_its_reason(iris_address, reference, bad, message):
    good = np.array([5.9, 3.0, 5.1, 1.8], np.float32)
    labels, probabilities = reference(good[None])
    result = Client(iris_address, "iris", "predict_with_puid").infer([bad, {"x": good, "puid": "good"}])
    assert result[0] == {
        "error": STAGE_ERROR.format(stage="measurements_and_puid", method="predict_with_puid") + message
    }
    assert result[1]["label"] == labels[0] and result[1]["puid"] == "good"
    np.testing.assert_array_equal(result[1]["probabilities"], probabilities[0])


def test_predict_refuses_bad_x_too(iris_address):
    result = Client(iris_address, "iris", "predict").infer([{"x": np.ones(5, np.float32)}, {"x": np.ones(4)}])
    assert result[0] == {
        "error": STAGE_ERROR.format(stage="measurements", method="predict")
        + "x must hold 4 measurements (sepal length, sepal width, petal length, petal width in "
        "cm), got shape [5]"
    }
    assert result[1]["label"] in CLASS_NAMES


def test_example_client(iris_address, reference):
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]], np.float32)
    labels, _ = reference(rows)
    lines = run_example_client("iris", iris_address).splitlines()
    assert lines[0] == "predict:" and lines[4] == "predict_with_puid:" and len(lines) == 8, lines
    for i, label in enumerate(labels):
        puid, printed_label = lines[1 + i].split()[:2]
        assert _is_uuid4_hex(puid) and printed_label == label
        assert lines[5 + i].split()[:2] == [f"flower-{i}", label]


def test_open_inference_protocol_with_numeric_and_string_inputs(iris_address, reference):
    """Over OIP a request mixing a numeric input (x, one row per instance) with a BYTES one (puid): each
    instance gets its own row and its own id back."""
    import tritonclient.grpc as triton

    rows = load_iris().data.astype(np.float32)[5:12]
    labels, probabilities = reference(rows)
    puids = np.array([f"id-{i}".encode() for i in range(len(rows))], dtype=object)
    x = triton.InferInput("x", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows)
    puid = triton.InferInput("puid", [len(rows)], "BYTES")
    puid.set_data_from_numpy(puids)
    result = triton.InferenceServerClient(iris_address).infer("iris.predict_with_puid", [x, puid])
    assert result.as_numpy("puid").tolist() == puids.tolist()
    assert [v.decode() for v in result.as_numpy("label").tolist()] == labels
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities)
