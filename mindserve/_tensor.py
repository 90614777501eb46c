"""The server's neutral form of a tensor on its way between a frontend and a worker: dtype code, shape and
raw little-endian bytes (UTF-8 text for MS_STRING, the bytes themselves for MS_BYTES). Frontends make and read
these; the dispatcher and the transport move them without looking inside."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Optional, Union

if TYPE_CHECKING:
    import numpy as np


class RawTensor(NamedTuple):
    dtype: int
    shape: tuple
    data: Union[bytes, memoryview]


class StackedOutput(NamedTuple):
    """One output of every instance of a request, back to back: ``count`` rows of ``row_shape``."""

    dtype: int
    row_shape: tuple
    data: Union[bytes, memoryview]


class InstanceResults(list):
    """The results of a request, one per instance: a ``dict[str, RawTensor]`` of outputs, or the error (a
    ``mindserve._errors.ServingError``) that failed the instance. What the dispatcher answers; see also
    StackedResults, the same for a request whose instances all succeeded with stacked outputs."""

    stacked: Optional[dict[str, StackedOutput]] = None  # never here: see StackedResults

    def first_error(self) -> Optional[Exception]:
        """The error of the first failed instance, or None when every instance succeeded."""
        for result in self:
            if isinstance(result, Exception):
                return result
        return None


class StackedResults(Sequence):
    """The results of a request whose instances all succeeded with stacked outputs: a sequence of one
    ``dict[str, RawTensor]`` per instance, made on demand, whose outputs (``stacked``) frontends can also take
    whole (a reply written in one pass, an OIP tensor as it is)."""

    def __init__(self, count: int, outputs: dict[str, StackedOutput]):
        self._count = count
        self.outputs = outputs
        self.row_bytes = {name: len(out.data) // count if count else 0 for name, out in outputs.items()}

    @property
    def stacked(self) -> dict[str, StackedOutput]:
        """Each output of every instance, back to back."""
        return self.outputs

    def first_error(self) -> None:
        """None: every instance succeeded."""
        return None

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if not -self._count <= index < self._count:
            raise IndexError("instance index out of range")
        index %= self._count
        result = {}
        for name, out in self.outputs.items():
            size = self.row_bytes[name]
            result[name] = RawTensor(out.dtype, out.row_shape, out.data[index * size : (index + 1) * size])
        return result


class StackedInput(NamedTuple):
    """One input of every instance of a request, each row still inside the request's bytes: row ``i`` is
    ``row_size`` bytes at ``offsets[i]`` of ``source``."""

    dtype: int
    row_shape: tuple
    row_size: int
    source: Union[bytes, memoryview]
    offsets: np.ndarray  # uint64, one per instance


class StackedInputs(Sequence):
    """The instances of a request whose every input is numeric and shaped alike in all of them, read in place
    from the request's bytes. A sequence of one ``dict[str, RawTensor]`` per instance, made on demand; the
    transport instead copies each input's rows straight into a stacked column."""

    def __init__(self, count: int, inputs: dict[str, StackedInput]):
        self._count = count
        self.inputs = inputs

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if not -self._count <= index < self._count:
            raise IndexError("instance index out of range")
        index %= self._count
        result = {}
        for name, col in self.inputs.items():
            start = int(col.offsets[index])
            result[name] = RawTensor(col.dtype, col.row_shape, memoryview(col.source)[start : start + col.row_size])
        return result

    def part(self, start: int, stop: int) -> "StackedInputs":
        """Instances ``start`` to ``stop`` (exclusive) as a StackedInputs of their own."""
        return StackedInputs(
            stop - start, {name: col._replace(offsets=col.offsets[start:stop]) for name, col in self.inputs.items()}
        )


Results = Union[InstanceResults, StackedResults]
