"""The server's neutral form of a tensor on its way between a frontend and a worker: dtype code, shape and
raw little-endian bytes (UTF-8 text for MS_STRING, the bytes themselves for MS_BYTES). Frontends make and read
these; the dispatcher and the transport move them without looking inside."""
from __future__ import annotations

from typing import NamedTuple, Union


class RawTensor(NamedTuple):
    dtype: int
    shape: tuple
    data: Union[bytes, memoryview]
