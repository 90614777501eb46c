"""The frames servable: methods that take one video frame, an HxWx3 uint8 RGB array, as the video-analytics
media stream (MediaGraphExtension/ProcessMediaStream) delivers it; their outputs are named as the stream maps
them to inferences (``label``, ``confidence``).

    intensity(frame)  -> label, confidence   the video-analytics reference extension's classifier: "light" when
                                             the frame's mean luminance is at least half of full scale, else
                                             "dark"; confidence: how far from the middle, 0.5 to 1.0 (float32)
    digit(frame)      -> label, confidence   the digit written in the frame (bright on dark, as the digits
                                             servable reads it), '0'..'9', and its probability (float32)

Model (version folder ``1/``): digits_mlp.onnx, the digits servable's model (written by
example/digits/export_model/train_digits.py with it): x float32 [32, 64] -> scores float32 [32, 10].
Stages are pure Python except the digits model.
"""
import numpy as np

from mindserve.server import register

SIDE = 8  # the digits model reads 8x8 images
LEVELS = 16  # of 17 levels, 0..16
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 weights of R, G, B

digits_model = register.declare_model(model_file="digits_mlp.onnx", model_format="ONNX", with_batch_dim=True)


def _frame(frame: np.ndarray) -> np.ndarray:
    if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3):
        kind = getattr(frame, "dtype", type(frame).__name__)
        raise register.InputError(f"frame should be an HxWx3 uint8 RGB array, got {kind} "
                                  f"{list(getattr(frame, 'shape', []))}")
    return frame


def luminance(frame: np.ndarray) -> np.ndarray:
    """Each pixel's luminance, 0.0 to 1.0 (float32 HxW)."""
    return _frame(frame).astype(np.float32) @ LUMA / np.float32(255)


def classify_intensity(frame: np.ndarray) -> tuple:
    level = float(luminance(frame).mean())
    if level >= 0.5:
        return "light", np.float32(level)
    return "dark", np.float32(1.0 - level)


def digit_row(frame: np.ndarray) -> np.ndarray:
    """The frame as the digits model's input row: luminance averaged over an 8x8 grid of cells (the frame's sides
    must be multiples of 8), rounded to 17 levels, normalized to [-1, 1]."""
    gray = luminance(frame)
    height, width = gray.shape
    if height % SIDE or width % SIDE:
        raise register.InputError(f"frame of {width}x{height}: digit reads frames whose sides are multiples of "
                                  f"{SIDE}")
    cells = gray.reshape(SIDE, height // SIDE, SIDE, width // SIDE).mean(axis=(1, 3))
    levels = np.rint(cells * np.float32(LEVELS))
    return (levels / np.float32(LEVELS / 2) - np.float32(1)).reshape(SIDE * SIDE).astype(np.float32)


def best_digit(scores: np.ndarray) -> tuple:
    best = int(np.argmax(scores))
    return str(best), np.float32(scores[best])


@register.register_method(output_names=["label", "confidence"])
def intensity(frame):
    """Light or dark, and how sure."""
    return register.add_stage(classify_intensity, frame, outputs_count=2)


@register.register_method(output_names=["label", "confidence"])
def digit(frame):
    """The digit in the frame, and its probability."""
    row = register.add_stage(digit_row, frame, outputs_count=1)
    scores = register.add_stage(digits_model, row, outputs_count=1)
    return register.add_stage(best_digit, scores, outputs_count=2)
