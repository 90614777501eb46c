"""A method's outputs for one frame as the media-stream extension's inferences, by output name:

- ``label`` alone (a string): one CLASSIFICATION, ``Tag{value: label}``; with ``confidence`` (a number) its tag's
  confidence;
- ``label`` with ``box`` (four numbers l, t, w, h, normalised to 0..1 of the frame): one ENTITY with that tag
  and box;
- for several detections in one frame: ``label`` an integer array of K class ids (the tag's value is the id as
  text), ``confidence`` K numbers and ``box`` K x 4 numbers: K ENTITY inferences (CLASSIFICATION without box);
- a method without ``label`` answers no inference (the sample is acknowledged all the same).
Other outputs are ignored. An output of the wrong kind fails the stream with a text naming it.
"""

from __future__ import annotations

from typing import Any, Mapping, Union

import numpy as np

from mindserve import _dtypes
from mindserve._errors import StageFailed
from mindserve._proto import media_graph as pb
from mindserve._tensor import RawTensor


def _value(tensor: RawTensor) -> Union[str, np.ndarray]:
    if tensor.dtype == _dtypes.MS_STRING:
        return bytes(tensor.data).decode(errors="replace")
    if tensor.dtype == _dtypes.MS_BYTES:
        return bytes(tensor.data).decode(errors="replace")
    return np.frombuffer(tensor.data, _dtypes.NUMPY_OF[tensor.dtype]).reshape(tensor.shape)


def _numbers(outputs: Mapping[str, RawTensor], name: str, count: int, width: int = 1) -> np.ndarray:
    value = _value(outputs[name])
    if isinstance(value, str) or value.dtype.kind not in "biuf" or value.size != count * width:
        shape = f"{count} x {width}" if width > 1 else str(count)
        raise StageFailed(
            f"output '{name}' should be {shape} number(s) for the frame's inferences, got "
            f"{value if isinstance(value, str) else f'{value.dtype} {list(value.shape)}'}"
        )
    return value.reshape(count, width).astype(np.float64)


def frame_inferences(outputs: Mapping[str, RawTensor]) -> list[Any]:
    """The Inference messages of one frame's outputs (see the module text)."""
    if "label" not in outputs:
        return []
    label = _value(outputs["label"])
    if isinstance(label, str):
        tags = [label]
    elif label.dtype.kind in "iu" and label.ndim <= 1:
        tags = [str(int(v)) for v in label.reshape(-1)]
    else:
        raise StageFailed(
            f"output 'label' should be a string or an integer array of class ids, got {label.dtype} {list(label.shape)}"
        )
    count = len(tags)
    confidence = _numbers(outputs, "confidence", count)[:, 0] if "confidence" in outputs else None
    boxes = _numbers(outputs, "box", count, 4) if "box" in outputs else None
    found = []
    for k, value in enumerate(tags):
        tag = {"value": value, "confidence": float(confidence[k]) if confidence is not None else 0.0}
        if boxes is None:
            found.append(pb.Inference(type=pb.Inference.CLASSIFICATION, classification={"tag": tag}))
        else:
            box = dict(zip("ltwh", (float(v) for v in boxes[k])))
            found.append(pb.Inference(type=pb.Inference.ENTITY, entity={"tag": tag, "box": box}))
    return found
