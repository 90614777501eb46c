"""Video frames of the media-stream extension as a method takes them: an HxWx3 uint8 RGB array.

A stream's descriptor fixes the frame format (``FrameFormat.from_descriptor`` checks it once); each sample's bytes
are then decoded with it: BMP, JPG and PNG through Pillow, RAW in one of six packed RGB layouts, rows
``stride_bytes`` apart. Every check happens before any pixel is touched, and each failure is a FrameError whose
text names what is wrong, with the status that ends the stream.
"""

from __future__ import annotations

import io
from typing import NamedTuple, Optional

import numpy as np

from mindserve._proto import media_graph as pb

MAX_SIDE = 8192  # pixels, each way
MAX_PIXELS = 40_000_000  # a frame of more is refused before it is decoded (a small PNG can declare a huge image)

_FORMAT = pb.VideoFrameSampleFormat
ENCODINGS = {_FORMAT.BMP: "BMP", _FORMAT.JPG: "JPG", _FORMAT.PNG: "PNG", _FORMAT.RAW: "RAW"}
# pixel format -> (name, bytes per pixel, the index of R, G, B in a pixel)
RAW_LAYOUTS = {
    _FORMAT.RGB24: ("RGB24", 3, (0, 1, 2)),
    _FORMAT.BGR24: ("BGR24", 3, (2, 1, 0)),
    _FORMAT.RGBA: ("RGBA", 4, (0, 1, 2)),
    _FORMAT.BGRA: ("BGRA", 4, (2, 1, 0)),
    _FORMAT.ARGB: ("ARGB", 4, (1, 2, 3)),
    _FORMAT.ABGR: ("ABGR", 4, (3, 2, 1)),
}
SUPPORTED_RAW = ", ".join(name for name, _, _ in RAW_LAYOUTS.values())


class FrameError(Exception):
    """A frame format or frame the stream cannot take: ``status`` is the gRPC status name that ends it."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _pixel_format_name(value: int) -> str:
    try:
        return str(_FORMAT.PixelFormat.Name(value))
    except ValueError:
        return str(value)


class FrameFormat(NamedTuple):
    """How each sample's bytes are laid out: encoding, and for RAW the layout, size and row stride."""

    encoding: int
    width: int
    height: int
    bytes_per_pixel: int = 0
    channels: tuple = (0, 1, 2)
    stride: int = 0

    @classmethod
    def from_descriptor(cls, media: object) -> "FrameFormat":
        """The format a stream's MediaDescriptor gives its video frames; FrameError when it gives none, or one
        this server does not take."""
        if not media.HasField("video_frame_sample_format"):  # type: ignore[attr-defined]
            raise FrameError(
                "INVALID_ARGUMENT",
                "the media descriptor has no video_frame_sample_format: this extension takes video frames",
            )
        sample = media.video_frame_sample_format  # type: ignore[attr-defined]
        if sample.encoding not in ENCODINGS:
            raise FrameError(
                "INVALID_ARGUMENT", f"frame encoding {sample.encoding} is not supported: send BMP, JPG, PNG or RAW"
            )
        width, height = sample.dimensions.width, sample.dimensions.height
        if width > MAX_SIDE or height > MAX_SIDE:
            raise FrameError(
                "OUT_OF_RANGE", f"frame dimensions {width}x{height} exceed the limit of {MAX_SIDE}x{MAX_SIDE}"
            )
        if sample.encoding != _FORMAT.RAW:
            return cls(sample.encoding, width, height)
        layout = RAW_LAYOUTS.get(sample.pixel_format)
        if layout is None:
            raise FrameError(
                "INVALID_ARGUMENT",
                f"pixel format {_pixel_format_name(sample.pixel_format)} is not "
                f"supported for RAW frames: send {SUPPORTED_RAW}",
            )
        if width == 0 or height == 0:
            raise FrameError("OUT_OF_RANGE", f"RAW frame dimensions {width}x{height}: both must be at least 1")
        _, bytes_per_pixel, channels = layout
        row = width * bytes_per_pixel
        stride = sample.stride_bytes or row
        if stride < row:
            raise FrameError(
                "INVALID_ARGUMENT",
                f"stride_bytes {stride} is less than a row of {width} {layout[0]} pixels ({row} bytes)",
            )
        return cls(sample.encoding, width, height, bytes_per_pixel, channels, stride)

    @property
    def raw_size(self) -> int:
        """The bytes of one RAW frame (every row a whole stride)."""
        return self.stride * self.height

    @property
    def row_bytes(self) -> int:
        """The bytes of one RAW row's pixels (the stride less its padding)."""
        return self.width * self.bytes_per_pixel

    def packed(self) -> "FrameFormat":
        """This format with rows one after another, without padding: how a RAW frame read from shared memory
        (its rows only, never the gaps between them) is decoded. Encoded formats are their own."""
        return self._replace(stride=self.row_bytes) if self.encoding == _FORMAT.RAW else self

    def describe(self) -> str:
        if self.encoding != _FORMAT.RAW:
            return ENCODINGS[self.encoding]
        name = next(n for n, b, c in RAW_LAYOUTS.values() if (b, c) == (self.bytes_per_pixel, self.channels))
        return f"RAW {name} {self.width}x{self.height}"

    def decode(self, data: object) -> np.ndarray:
        """A sample's bytes as an HxWx3 uint8 RGB array (C-contiguous); FrameError when they are not a frame of
        this format."""
        if self.encoding == _FORMAT.RAW:
            return self._raw(data)
        return self._encoded(data)

    def _raw(self, data: object) -> np.ndarray:
        view = memoryview(data)  # type: ignore[arg-type]
        if view.nbytes != self.raw_size:
            raise FrameError(
                "INVALID_ARGUMENT",
                f"a {self.describe()} frame with rows of {self.stride} bytes is "
                f"{self.raw_size} bytes, the sample has {view.nbytes}",
            )
        rows = np.frombuffer(view, np.uint8).reshape(self.height, self.stride)
        pixels = rows[:, : self.width * self.bytes_per_pixel].reshape(self.height, self.width, self.bytes_per_pixel)
        if self.bytes_per_pixel == 3 and self.channels == (0, 1, 2):
            return np.ascontiguousarray(pixels)  # no copy when the rows are not padded
        return np.ascontiguousarray(pixels[:, :, list(self.channels)])

    def _encoded(self, data: object) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        expected = {_FORMAT.BMP: "BMP", _FORMAT.JPG: "JPEG", _FORMAT.PNG: "PNG"}[self.encoding]
        try:
            with Image.open(io.BytesIO(bytes(data)), formats=[expected]) as image:  # type: ignore[call-overload]
                width, height = image.size
                if width * height > MAX_PIXELS or width > MAX_SIDE or height > MAX_SIDE:
                    raise FrameError(
                        "OUT_OF_RANGE",
                        f"the {ENCODINGS[self.encoding]} frame is {width}x{height}, "
                        f"more than the limit of {MAX_SIDE}x{MAX_SIDE}",
                    )
                if (self.width or self.height) and (width, height) != (self.width, self.height):
                    raise FrameError(
                        "INVALID_ARGUMENT",
                        f"the {ENCODINGS[self.encoding]} frame is {width}x{height}, "
                        f"the descriptor says {self.width}x{self.height}",
                    )
                rgb = image if image.mode == "RGB" else image.convert("RGB")
                rgb.load()
                # read-only and C-ordered as it comes: a further copy would only raise the decoding's peak
                # (what it holds is reserved in the stream memory: frame_size.DECODE_COPIES)
                return np.asarray(rgb)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise FrameError(
                "INVALID_ARGUMENT", f"the sample is not a {ENCODINGS[self.encoding]} image: {exc}"
            ) from None


def expected_length(frame_format: FrameFormat) -> Optional[int]:
    """The byte size every sample of this format has (RAW), or None (encoded images vary)."""
    return frame_format.raw_size if frame_format.encoding == _FORMAT.RAW else None
