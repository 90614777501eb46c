"""Stacking instance tensors into a batch buffer, through the C core (one memcpy per piece, GIL released)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mindserve._native import ffi, lib


def stack_rows(
    pieces: Sequence[np.ndarray], batch_size: int, row_shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
    """A ``(batch_size, *row_shape)`` array holding the rows of ``pieces`` in order, the remaining rows (padding
    up to a fixed batch size) zero. A piece is one instance (``row_shape``) or several stacked
    (``(k, *row_shape)``); every piece must be ``dtype`` and hold whole rows. A single piece that already is
    the whole batch comes back as a view, without a copy."""
    if len(pieces) == 1 and pieces[0].dtype == dtype and pieces[0].flags.c_contiguous:
        piece = pieces[0]
        if piece.size == batch_size * math.prod(row_shape):
            return piece.reshape((batch_size, *row_shape))
    batch = np.empty((batch_size, *row_shape), dtype)
    pieces = [np.ascontiguousarray(p) for p in pieces]  # keeps the buffers alive through the C call
    if any(p.dtype != dtype for p in pieces):
        raise ValueError("instance tensors differ in data type from the batch")
    srcs = ffi.new("void *[]", [ffi.from_buffer(p) for p in pieces])
    sizes = ffi.new("size_t[]", [p.nbytes for p in pieces])
    row_bytes = batch.nbytes // batch_size if batch_size else 0
    if (
        lib.ms_gather_rows(
            ffi.from_buffer(batch, require_writable=True), batch.nbytes, row_bytes, srcs, sizes, len(pieces)
        )
        != 0
    ):
        raise ValueError("instance tensors do not fit the batch buffer")
    return batch
