"""Message classes built in a descriptor pool of mindserve's own, from a descriptor set compiled at build time.

Standard clients register some of the same full names in protobuf's default pool from their own .proto files
(tritonclient: ``inference.ModelInferRequest``; Seldon's clients: ``io.seldon.api.rpc.*``), and protobuf refuses
a second file that defines a name already there: whichever was imported second would fail. So the build
compiles those .proto files to descriptor sets (``*.desc`` beside them, with their imports, generated like the
``*_pb2.py`` modules and never committed) and their classes are made here, apart. mindserve and those clients
can then live in one process, and the wire format is the protocol's either way.
"""

from __future__ import annotations

import os

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

HERE = os.path.dirname(os.path.abspath(__file__))


def load(desc_name: str) -> descriptor_pool.DescriptorPool:
    """A new pool holding every file of the descriptor set ``desc_name`` (a file beside this module)."""
    path = os.path.join(HERE, desc_name)
    try:
        with open(path, "rb") as f:
            files = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    except FileNotFoundError:
        raise ImportError(
            f"{path} is missing: it is generated at build time (pip install -e . or python setup.py build_protos)"
        ) from None
    pool = descriptor_pool.DescriptorPool()
    for file_proto in files.file:  # (dependencies come first in a set made with --include_imports)
        pool.AddSerializedFile(file_proto.SerializeToString())
    return pool


def message_class(pool: descriptor_pool.DescriptorPool, full_name: str) -> type:
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
