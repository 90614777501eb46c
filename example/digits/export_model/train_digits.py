"""Trains the digits servable's classifier, writes servables/digits/1/digits_mlp.onnx (and the same file for the
frames servable's digits method, servables/frames/1/digits_mlp.onnx) and a folder of held-out test images
(example/digits/test_images/).

Data: scikit-learn's handwritten digits (load_digits: 1797 images, 8x8, levels 0..16, ink high). Every 4th
sample (index % 4 == 0, 450 images) is held out; the model is trained on the other 1347.

Model: scikit-learn's MLPClassifier, 64 -> 32 ReLU -> 10, on levels normalized as (v / 16 - 0.5) / 0.5, i.e.
v / 8 - 1 in [-1, 1] (exact in float32 for the integer levels). Its weights go into an ONNX graph written
with onnx.helper:

    x       float32 [32, 64]    the normalized 8x8 levels, row by row
    scores  float32 [32, 10]    Softmax(Gemm(Relu(Gemm(x, W1, b1)), W2, b2)), the probability of each digit

The batch is fixed at 32 rows because ONNX Runtime computes a single row through another kernel than a batch,
and the last bits of the scores differ between the two; with a fixed batch every image goes through the same
kernel however the server groups instances (it pads the last batch). Training uses a fixed random_state, so
every run writes the same files.

Test images: the first 50 held-out samples as PNG, named <index>_<true label>.png (index into load_digits,
4 digits), 32x32 (each level pixel repeated 4x4, so that the server's resize to 8x8 is real work), grayscale
with ink bright on black like the training data: pixel = round(level * 255 / 16).

    pip install 'mindserve[export]'
    python example/digits/export_model/train_digits.py [MODEL_PATH [IMAGES_FOLDER]]
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = os.path.join(HERE, "..", "..", "..", "servables", "digits", "1", "digits_mlp.onnx")
FRAMES_MODEL = os.path.abspath(os.path.join(HERE, "..", "..", "..", "servables", "frames", "1", "digits_mlp.onnx"))
DEFAULT_IMAGES = os.path.join(HERE, "..", "test_images")
BATCH_SIZE = 32
HIDDEN_UNITS = 32
TEST_IMAGE_COUNT = 50
IMAGE_SIDE = 32


def held_out(count: int) -> np.ndarray:
    """The mask of held-out samples among ``count``: every 4th one, a split that needs no random numbers."""
    return np.arange(count) % 4 == 0


def normalize(levels: np.ndarray) -> np.ndarray:
    """Levels 0..16 to float32 in [-1, 1]; the servable's preprocess does the same."""
    return levels.astype(np.float32) / 8 - 1


def train() -> tuple[MLPClassifier, float, int]:
    """The fitted MLP, its accuracy on the held-out samples and their count."""
    data = load_digits()
    test = held_out(len(data.target))
    x = normalize(data.data)
    mlp = MLPClassifier(hidden_layer_sizes=(HIDDEN_UNITS,), activation="relu", max_iter=400, random_state=0)
    mlp.fit(x[~test], data.target[~test])
    return mlp, float(mlp.score(x[test], data.target[test])), int(test.sum())


def to_onnx_model(mlp: MLPClassifier) -> onnx.ModelProto:
    """The MLP's forward pass as ONNX, ending in Softmax (MLPClassifier's predict_proba for 10 classes)."""
    (w1, w2), (b1, b2) = mlp.coefs_, mlp.intercepts_
    weights = [numpy_helper.from_array(array.astype(np.float32), name)
               for array, name in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["hidden_linear"]),
        helper.make_node("Relu", ["hidden_linear"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH_SIZE, 64])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [BATCH_SIZE, 10])],
        initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="mindserve")
    model.ir_version = 8  # loadable by every ONNX Runtime release of the last years
    onnx.checker.check_model(model)
    return model


def write_test_images(folder: str) -> list[str]:
    """Write the first TEST_IMAGE_COUNT held-out digits as PNG files into ``folder``; returns their paths."""
    data = load_digits()
    os.makedirs(folder, exist_ok=True)
    paths = []
    for index in np.flatnonzero(held_out(len(data.target)))[:TEST_IMAGE_COUNT]:
        pixels = np.rint(data.images[index] * (255 / 16)).astype(np.uint8)
        scale = IMAGE_SIDE // 8
        image = Image.fromarray(np.kron(pixels, np.ones((scale, scale), np.uint8)))  # uint8 2-D: mode L
        path = os.path.join(folder, f"{index:04d}_{data.target[index]}.png")
        image.save(path, format="PNG")
        paths.append(path)
    return paths


if __name__ == "__main__":
    model_path = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL)
    images_folder = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else DEFAULT_IMAGES)
    fitted, accuracy, held_out_count = train()
    os.makedirs(os.path.dirname(model_path), exist_ok=True)
    onnx.save(to_onnx_model(fitted), model_path)
    print(f"held-out accuracy {accuracy:.4f} ({held_out_count} images); wrote {model_path}")
    if len(sys.argv) <= 1:  # the frames servable classifies digits in video frames with the same model
        onnx.save(to_onnx_model(fitted), FRAMES_MODEL)
        print(f"wrote {FRAMES_MODEL}")
    print(f"wrote {len(write_test_images(images_folder))} test images into {images_folder}")
