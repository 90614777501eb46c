"""Columns: the values of one method input or stage output over a batch of instances.

A column is a list of chunks in instance order. A chunk is either a stacked array (one row per instance: how a
request's same-shaped tensors arrive, and how a batching model's outputs leave) or a list of per-instance
values (str, bytes, arrays of differing shapes, what Python stages return; None for an instance that failed).
Model stages take stacked columns whole, gathering rows into batch buffers in C; Python stages take rows.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np

Chunk = Union[np.ndarray, list]


def _rows_of(array: np.ndarray) -> list:
    if array.ndim == 1:  # iterating would give numpy scalars; instances are 0-d arrays
        return [array[i, ...] for i in range(array.shape[0])]
    return list(array)


class Column:
    __slots__ = ("chunks", "count")

    def __init__(self, chunks: list[Chunk]):
        self.chunks = chunks
        self.count = sum(len(c) for c in chunks)

    @classmethod
    def of_values(cls, values: list) -> "Column":
        return cls([values])

    def rows(self) -> list[Any]:
        """One value per instance."""
        out: list = []
        for chunk in self.chunks:
            out.extend(_rows_of(chunk) if isinstance(chunk, np.ndarray) else chunk)
        return out

    def stacked_type(self) -> Optional[tuple[np.dtype, tuple]]:
        """(dtype, row shape) when every chunk is a stacked array of that dtype and row shape, else None."""
        kind = None
        for chunk in self.chunks:
            if not isinstance(chunk, np.ndarray) or chunk.ndim == 0:
                return None
            this = (chunk.dtype, chunk.shape[1:])
            if kind is None:
                kind = this
            elif this != kind:
                return None
        return kind

    def pieces(self, start: int, stop: int) -> list[np.ndarray]:
        """The row blocks covering instances [start, stop) (views; the column must be stacked)."""
        return [chunk for chunk in self.slice(start, stop).chunks if isinstance(chunk, np.ndarray)]

    def slice(self, start: int, stop: int) -> "Column":
        """The instances [start, stop) as a column of their own (views of the same chunks)."""
        out = []
        at = 0
        for chunk in self.chunks:
            end = at + len(chunk)
            if end > start and at < stop:
                out.append(chunk[max(start - at, 0) : min(stop, end) - at])
            at = end
        return Column(out)
