"""How much memory a media-stream frame takes once decoded, known before it is decoded: a RAW frame's from its
format, an encoded image's from its header (Pillow reads the header without decoding the pixels), so that the
stream can reserve it in the server's stream memory first (``mindserve._frontends.stream_memory``)."""

from __future__ import annotations

import io
from typing import Any, Optional

from mindserve._frontends.media_stream.frames import MAX_PIXELS, MAX_SIDE, FrameFormat
from mindserve._proto import media_graph as pb

_FORMAT = pb.VideoFrameSampleFormat
_PIL_FORMATS = {_FORMAT.BMP: "BMP", _FORMAT.JPG: "JPEG", _FORMAT.PNG: "PNG"}
PEEK_BYTES = 64 << 10  # an image's header is read from this much of it first (on the event loop: it is small)
# Decoding an image holds, at its peak, up to three copies of the frame (Pillow's image, its RGB conversion when
# it has another mode, the bytes numpy takes from it as the frame): reserved while it decodes, the frame alone
# once decoded.
DECODE_COPIES = 3


def raw_copy_bytes(frame_format: FrameFormat) -> int:
    """The bytes of the copy decoding a RAW frame makes: none when its rows are packed RGB24 (the frame is then a
    view of the bytes read), else the HxWx3 array."""
    if (
        frame_format.bytes_per_pixel == 3
        and frame_format.channels == (0, 1, 2)
        and frame_format.stride == frame_format.width * 3
    ):
        return 0
    return frame_format.width * frame_format.height * 3


def image_size(frame_format: FrameFormat, data: Any) -> Optional[tuple[int, int]]:
    """(width, height) of the encoded image in ``data``, from its header; None when the header cannot be read
    from these bytes (too few of them, or not an image: the decoding then says why) or the image is over the
    frame limits (which the decoding refuses before it allocates anything)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(bytes(data)), formats=[_PIL_FORMATS[frame_format.encoding]]) as image:
            width, height = image.size
    except Exception:  # whatever Pillow raises on a header it cannot read: the decoding reports it
        return None
    if width * height > MAX_PIXELS or width > MAX_SIDE or height > MAX_SIDE:
        return None
    return width, height
