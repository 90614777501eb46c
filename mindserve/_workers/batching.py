"""Stacking instance tensors into a batch buffer, through the C core (one memcpy per instance, GIL released)."""
from __future__ import annotations

import numpy as np

from mindserve._native import ffi, lib


def stack_rows(rows: list[np.ndarray], batch_size: int, row_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A ``(batch_size, *row_shape)`` array whose first ``len(rows)`` rows are ``rows`` and whose remaining rows
    (padding up to a fixed batch size) are zero. Each row must hold exactly ``row_shape`` of ``dtype`` bytes."""
    if len(rows) == 1 and batch_size == 1:
        return rows[0].reshape((1, *row_shape))  # a view: nothing to gather
    batch = np.empty((batch_size, *row_shape), dtype)
    rows = [np.ascontiguousarray(r) for r in rows]  # keeps the buffers alive through the C call
    srcs = ffi.new("void *[]", [ffi.from_buffer(r) for r in rows])
    sizes = ffi.new("size_t[]", [r.nbytes for r in rows])
    row_bytes = batch.nbytes // batch_size if batch_size else 0
    if lib.ms_gather_rows(ffi.from_buffer(batch, require_writable=True), batch.nbytes, row_bytes,
                          srcs, sizes, len(rows)) != 0:
        raise ValueError("instance tensors do not fit the batch buffer")
    return batch
