"""Seldon's Classifier messages (``seldon.proto``, package ``io.seldon.api.rpc``), built in a descriptor pool of
their own (see ``private_pool``: Seldon's clients register the same names in protobuf's default pool)."""

from __future__ import annotations

from mindserve._proto import private_pool

SERVICE_NAME = "io.seldon.api.rpc.Classifier"

POOL = private_pool.load("seldon.desc")
DESCRIPTOR = POOL.FindFileByName("mindserve/_proto/seldon.proto")

ClassificationRequest = private_pool.message_class(POOL, "io.seldon.api.rpc.ClassificationRequest")
ClassificationReply = private_pool.message_class(POOL, "io.seldon.api.rpc.ClassificationReply")
