"""The bundled digits servable (MindSpore Serving's ResNet-50 example, for scikit-learn's 8x8 digits), served by
its example script: every held-out digit encoded as PNG in memory goes through the server, and each answer must
be exactly what ONNX Runtime computes in this process from the digit's own levels with the same model file.

The served model classifies the 450 held-out digits with accuracy 0.9822 (442 right); the test asserts the
floor ACCURACY_FLOOR = 0.95.
"""

from __future__ import annotations

import io
import os
import re

import numpy as np
import onnxruntime
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from mindserve.client import Client
from support.examples import run_example_client, start_example_server
from support.paths import BUNDLED_SERVABLES, REPO
from support.processes import free_port

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

MODEL_FILE = os.path.join(BUNDLED_SERVABLES, "digits", "1", "digits_mlp.onnx")
TEST_IMAGES = os.path.join(REPO, "example", "digits", "test_images")
MODEL_BATCH = 32  # the model's fixed batch dim
ACCURACY_FLOOR = 0.95
STAGE_ERROR = "Call Function 'digits.{stage}' Failed, method: '{method}', stage index(begin with 1): 1, error msg: "
UNDECODABLE = "image cannot be decoded: not a PNG, JPEG or other image format Pillow reads, or truncated"


@pytest.fixture(scope="module")
def digits_address(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    server = start_example_server(tmp, "digits", f"127.0.0.1:{free_port()}")
    yield server.address
    assert server.stop() == 0, server.output


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def held_out(digits) -> np.ndarray:
    """The indexes the model was not trained on: every 4th sample (the split of train_digits.py)."""
    return np.flatnonzero(np.arange(len(digits.target)) % 4 == 0)


@pytest.fixture(scope="module")
def scores_of():
    """Scores float32 [n, 10] for levels [n, 64] (integers 0..16), by ONNX Runtime in this process: normalized
    as (level / 16 - 0.5) / 0.5, one thread like the workers, zero-padded batches of the model's 32 (a row's
    result does not depend on the other rows)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(MODEL_FILE, options, providers=["CPUExecutionProvider"])

    def run(levels: np.ndarray) -> np.ndarray:
        x = ((levels / 16 - 0.5) / 0.5).astype(np.float32)  # exact in float64 and in float32 for 0..16
        scores = []
        for start in range(0, len(x), MODEL_BATCH):
            padded = np.zeros((MODEL_BATCH, 64), np.float32)
            chunk = x[start : start + MODEL_BATCH]
            padded[: len(chunk)] = chunk
            scores.append(session.run(["scores"], {"x": padded})[0][: len(chunk)])
        return np.concatenate(scores)

    return run


def png_of(levels: np.ndarray, side: int = 32) -> bytes:
    """An 8x8 digit (levels 0..16) as a side x side grayscale PNG: pixel round(level * 255 / 16), each repeated
    side/8 times each way, as the exported test images are."""
    pixels = np.rint(levels.reshape(8, 8) * (255 / 16)).astype(np.uint8)
    image = Image.fromarray(pixels).resize((side, side), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def ranked(scores: np.ndarray) -> list[int]:
    """Digits by descending score, the smaller digit first among equal scores."""
    return sorted(range(len(scores)), key=lambda digit: (-scores[digit], digit))


def test_held_out_accuracy(digits_address, digits, held_out, scores_of):
    """All 450 held-out digits through classify_top1_batch, in requests of 100 (the last one 50)."""
    expected = [str(ranked(s)[0]) for s in scores_of(digits.data[held_out])]
    client = Client(digits_address, "digits", "classify_top1_batch")
    labels = []
    for start in range(0, len(held_out), 100):
        result = client.infer([{"image": png_of(digits.data[i])} for i in held_out[start : start + 100]])
        assert all(list(item) == ["label"] for item in result), result
        labels += [item["label"] for item in result]
    assert labels == expected
    accuracy = float(np.mean([label == str(digits.target[i]) for label, i in zip(labels, held_out)]))
    print(f"digits: held-out accuracy of the served model {accuracy:.4f} on {len(held_out)} images")
    assert accuracy >= ACCURACY_FLOOR


def test_classify_top1_answers_as_the_batch_method(digits_address, digits, held_out, scores_of):
    indexes = held_out[1::9]
    expected = [str(ranked(s)[0]) for s in scores_of(digits.data[indexes])]
    result = Client(digits_address, "digits", "classify_top1").infer(
        [{"image": png_of(digits.data[i], side=24)} for i in indexes]
    )
    assert [item["label"] for item in result] == expected


def test_classify_top5_labels_and_scores(digits_address, digits, held_out, scores_of):
    indexes = held_out[::15]
    scores = scores_of(digits.data[indexes])
    result = Client(digits_address, "digits", "classify_top5").infer(
        [{"image": png_of(digits.data[i], side=8)} for i in indexes]
    )
    for item, row in zip(result, scores):
        assert sorted(item) == ["labels", "scores"], item
        best = ranked(row)[:5]
        assert item["labels"] == ",".join(str(d) for d in best)
        assert item["scores"].dtype == np.float32 and item["scores"].shape == (5,)
        np.testing.assert_array_equal(item["scores"], row[best])


def test_rgb_jpeg_of_another_size_is_converted(digits_address, digits, scores_of):
    """A lossy RGB JPEG, 40x40: the reference decodes it with Pillow too (the JPEG decoder and the box filter are
    Pillow's) and rounds each cell to the levels 0..16."""
    pixels = np.rint(digits.images[7] * (255 / 16)).astype(np.uint8)
    rgb = Image.fromarray(pixels).resize((40, 40), Image.Resampling.NEAREST).convert("RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=95)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        cells = np.asarray(decoded.convert("L").resize((8, 8), Image.Resampling.BOX), np.float64)
    levels = np.rint(cells * 16 / 255).reshape(1, 64)
    expected = ranked(scores_of(levels)[0])[0]
    result = Client(digits_address, "digits", "classify_top1").infer([{"image": buffer.getvalue()}] * 2)
    assert result == [{"label": str(expected)}] * 2
    assert expected == digits.target[7]


@pytest.mark.parametrize(
    "method, stage",
    [("classify_top1", "preprocess"), ("classify_top5", "preprocess"), ("classify_top1_batch", "preprocess_batch")],
)
def test_undecodable_image_fails_with_its_reason(digits_address, digits, scores_of, method, stage):
    good = png_of(digits.data[3])
    result = Client(digits_address, "digits", method).infer([{"image": good}, {"image": b"\x89PNG not really"}])
    assert result[1] == {"error": STAGE_ERROR.format(stage=stage, method=method) + UNDECODABLE}
    best = ranked(scores_of(digits.data[3:4])[0])
    if method == "classify_top5":
        assert result[0]["labels"] == ",".join(str(d) for d in best[:5])
    else:
        assert result[0] == {"label": str(best[0])}


def test_bad_image_fails_alone_in_a_batch_stage(digits_address, digits, scores_of):
    """preprocess_batch yields the error of an undecodable image in its place: the images after it in the same
    call (other clients' too, when requests are batched together) still get their labels."""
    good = png_of(digits.data[3])
    result = Client(digits_address, "digits", "classify_top1_batch").infer(
        [{"image": b"not an image"}, {"image": good}, {"image": b""}, {"image": good}]
    )
    error = STAGE_ERROR.format(stage="preprocess_batch", method="classify_top1_batch") + UNDECODABLE
    label = {"label": str(ranked(scores_of(digits.data[3:4])[0])[0])}
    assert result == [{"error": error}, label, {"error": error}, label]


def test_truncated_png_and_str_input(digits_address, digits):
    good = png_of(digits.data[3])
    result = Client(digits_address, "digits", "classify_top1").infer(
        [{"image": good[: len(good) // 2]}, {"image": "0004_4.png"}, {"image": good}]
    )
    error = STAGE_ERROR.format(stage="preprocess", method="classify_top1")
    assert result[0] == {"error": error + UNDECODABLE}
    assert result[1] == {"error": error + "image must be the bytes of an encoded image, got str"}
    assert "label" in result[2]


def test_committed_test_images_are_held_out_digits(digits, held_out):
    """example/digits/test_images: the first 50 held-out digits, <index>_<label>.png, 32x32, each level pixel
    repeated 4x4."""
    names = sorted(os.listdir(TEST_IMAGES))
    assert names == [f"{i:04d}_{digits.target[i]}.png" for i in held_out[:50]]
    for name in names:
        index = int(name.split("_")[0])
        with Image.open(os.path.join(TEST_IMAGES, name)) as image:
            assert image.format == "PNG" and image.mode == "L" and image.size == (32, 32)
            pixels = np.asarray(image)
        expected = np.rint(digits.images[index] * (255 / 16)).astype(np.uint8)
        np.testing.assert_array_equal(pixels, np.kron(expected, np.ones((4, 4), np.uint8)))


def test_example_client_labels_the_test_images(digits_address, digits, scores_of):
    names = sorted(os.listdir(TEST_IMAGES))
    indexes = [int(name.split("_")[0]) for name in names]
    expected = [str(ranked(s)[0]) for s in scores_of(digits.data[indexes])]
    right = sum(label == str(digits.target[i]) for label, i in zip(expected, indexes))
    lines = run_example_client("digits", digits_address, TEST_IMAGES).splitlines()
    assert lines[: len(names)] == [f"{name}: {label}" for name, label in zip(names, expected)]
    assert lines[len(names)] == f"accuracy: {right}/{len(names)} = {right / len(names):.4f}"
    assert re.fullmatch(rf"top5 of {names[0]}: \[\{{.*", lines[len(names) + 1])
