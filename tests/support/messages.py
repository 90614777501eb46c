"""The server's message modules built at import time, as the tests use them.

``mindserve._proto.grpc_inference`` and ``media_graph`` make their message classes from descriptors when imported
(``private_pool.message_class``), typed as a plain ``type``: mypy would see none of their fields or methods
(``FromString``, ``inputs``...). Here the same modules are typed as ``Any``, as mypy sees the modules protoc writes
(``ms_service_pb2``, skipped by the mypy settings in pyproject.toml)."""

from __future__ import annotations

from typing import Any

from mindserve._proto import grpc_inference as _grpc_inference
from mindserve._proto import media_graph as _media_graph

grpc_inference: Any = _grpc_inference
media_graph: Any = _media_graph
