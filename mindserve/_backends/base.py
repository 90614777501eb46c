"""What every backend provides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: its name, wire dtype code, and shape with -1 for a variable dim."""

    name: str
    dtype: int
    shape: tuple[int, ...]


class BackendSession(Protocol):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the model on one input array per model input, in order; one array per output."""
        ...
