"""The video-analytics extension's messages (``media_graph.proto``), in a descriptor pool of their own (see
``private_pool``: clients generated from the public contract register the same names in protobuf's default pool,
and may share the process)."""

from __future__ import annotations

from typing import Any

from mindserve._proto import private_pool

PACKAGE = "microsoft.azure.media.live_video_analytics.extensibility.grpc.v1"
SERVICE_NAME = f"{PACKAGE}.MediaGraphExtension"

POOL = private_pool.load("media_graph.desc")
DESCRIPTOR = POOL.FindFileByName("mindserve/_proto/media_graph.proto")


def _message(name: str) -> Any:
    return private_pool.message_class(POOL, f"{PACKAGE}.{name}")


MediaStreamMessage = _message("MediaStreamMessage")
MediaStreamDescriptor = _message("MediaStreamDescriptor")
MediaSample = _message("MediaSample")
MediaDescriptor = _message("MediaDescriptor")
VideoFrameSampleFormat = _message("VideoFrameSampleFormat")
Inference = _message("Inference")
