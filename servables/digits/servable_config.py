"""The digits servable: an image classifier in the shape of MindSpore Serving's ResNet-50 example (decode,
resize and normalize in Python; the model; top-1 / top-5 in Python), for handwritten digits.

Model (version folder ``1/``): digits_mlp.onnx, an MLP trained on scikit-learn's 8x8 digits by
example/digits/export_model/train_digits.py, batch dim fixed at 32 rows (the worker pads the last batch):
x float32 [32, 64] -> scores float32 [32, 10], the probability of each digit 0..9.

Methods; ``image`` is the bytes of an encoded image (PNG, JPEG or any format Pillow reads), one digit written
bright on a dark background, as in the training data:
    classify_top1(image)        -> label                 str, the digit, e.g. '7'
    classify_top5(image)        -> labels, scores        labels: str, the 5 likeliest digits comma-separated
                                                         ('7,9,3,2,1'); scores: float32 [5], their scores
    classify_top1_batch(image)  -> label                 as classify_top1, decoding up to 32 images per call
                                                         of the preprocess stage

Preprocess: decode, convert to grayscale, resize to 8x8 (box filter: the mean of each cell), round to the
17 levels 0..16 of the training data (round(pixel * 16 / 255)), normalize as (level / 16 - 0.5) / 0.5.
Ties in scores rank the smaller digit first.
"""
import io
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from mindserve.server import register

SIDE = 8  # the training images are 8x8
LEVELS = 16  # and their pixels are the integers 0..16
BATCH_SIZE = 32  # the model's fixed batch; the batch preprocess decodes as many images per call

model = register.declare_model(model_file="digits_mlp.onnx", model_format="ONNX", with_batch_dim=True)


def preprocess(image: bytes) -> np.ndarray:
    """Encoded image bytes to the model's float32 [64] row; raises ValueError with a text for the client."""
    if not isinstance(image, bytes):
        raise ValueError(f"image must be the bytes of an encoded image, got {type(image).__name__}")
    try:
        with Image.open(io.BytesIO(image)) as decoded:
            gray = decoded.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        # Pillow's own texts name an internal BytesIO object; say what went wrong instead
        raise ValueError("image cannot be decoded: not a PNG, JPEG or other image format Pillow reads, or "
                         "truncated") from exc
    levels = np.rint(np.asarray(gray, np.float32) * np.float32(LEVELS / 255))
    # (level / 16 - 0.5) / 0.5, written as level / 8 - 1 so that every level maps exactly in float32
    return (levels / np.float32(LEVELS / 2) - np.float32(1)).reshape(SIDE * SIDE)


def preprocess_batch(instances: list) -> Iterator[tuple]:
    """The batch form of preprocess: one (image,) tuple per instance in, one (row,) tuple per instance out; an
    image that cannot be decoded yields its error, so it fails alone (the list may mix several clients' images)."""
    for (image,) in instances:
        try:
            yield (preprocess(image),)
        except ValueError as exc:
            yield exc


def ranked(scores: np.ndarray) -> np.ndarray:
    """Digit indexes by descending score; a stable sort keeps the smaller digit first among equal scores."""
    return np.argsort(-scores, kind="stable")


def top1(scores: np.ndarray) -> str:
    """The likeliest digit as a str."""
    return str(int(ranked(scores)[0]))


def top5(scores: np.ndarray) -> tuple:
    """The 5 likeliest digits comma-separated, and their scores (float32 [5])."""
    best = ranked(scores)[:5]
    return ",".join(str(int(i)) for i in best), scores[best]


@register.register_method(output_names=["label"])
def classify_top1(image):
    """The likeliest digit of one image."""
    x = register.add_stage(preprocess, image, outputs_count=1)
    scores = register.add_stage(model, x, outputs_count=1)
    return register.add_stage(top1, scores, outputs_count=1)


@register.register_method(output_names=["labels", "scores"])
def classify_top5(image):
    """The 5 likeliest digits of one image and their scores."""
    x = register.add_stage(preprocess, image, outputs_count=1)
    scores = register.add_stage(model, x, outputs_count=1)
    return register.add_stage(top5, scores, outputs_count=2)


@register.register_method(output_names=["label"])
def classify_top1_batch(image):
    """classify_top1 with a batch preprocess stage: a failing image fails itself and the images after it in
    the same call of the stage (a batch stage answers a call's instances in order, up to its first error)."""
    x = register.add_stage(preprocess_batch, image, outputs_count=1, batch_size=BATCH_SIZE)
    scores = register.add_stage(model, x, outputs_count=1)
    return register.add_stage(top1, scores, outputs_count=1)
