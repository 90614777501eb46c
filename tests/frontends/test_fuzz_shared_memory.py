"""Property tests of the size arithmetic of clients' shared memory, without a server: the media stream's frame
formats from hostile descriptors (width, height, stride, pixel format, encoding) and the reads of their frames
from a region, and a registered region's span checks (Region._span / read, with the request's read bound). Each
example either raises the typed error (FrameError, InvalidInput) or reads exactly the bytes it names, never a
byte more (every pread is counted), and never raises OverflowError or anything else.

Examples are derandomized (the same ones every run); ``MINDSERVE_FUZZ_PROFILE=explore`` draws 2000 new ones per
test for a longer hunt.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from mindserve._errors import InvalidInput
from mindserve._frontends.media_stream.frames import MAX_SIDE, RAW_LAYOUTS, FrameError, FrameFormat
from mindserve._frontends.media_stream.shared_region import SharedRegion
from mindserve._frontends.shared_memory.client_file import owner_set
from mindserve._frontends.shared_memory.regions import ClientRegions
from support.fuzz import fuzz_settings
from support.messages import media_graph as pb

FUZZ = fuzz_settings(300)

FILE_BYTES = 4096
CONTENT = (np.arange(FILE_BYTES) * 7 % 251).astype(np.uint8)  # no two neighbouring bytes alike
UINT32 = st.integers(0, 2**32 - 1)
UINT64 = st.integers(0, 2**64 - 1)
# small values (that fit the file, drawn most often) mixed with hostile ones (limits, overflows of 32 and 64 bits)
SMALL_SIDE = st.integers(1, 16)
SIDE = st.one_of(
    SMALL_SIDE, SMALL_SIDE, SMALL_SIDE, st.just(0), st.sampled_from([MAX_SIDE, MAX_SIDE + 1, 2**31, 2**32 - 1]), UINT32
)
STRIDE = st.one_of(st.just(0), st.just(0), st.integers(0, 80), st.sampled_from([2**31, 2**32 - 1, 1_000_000]), UINT32)
SMALL_OFFSET = st.one_of(st.integers(0, 64), st.integers(0, FILE_BYTES + 8))
OFFSET = st.one_of(SMALL_OFFSET, SMALL_OFFSET, SMALL_OFFSET, st.sampled_from([2**63 - 1, 2**63, 2**64 - 1]), UINT64)
SIZE = st.one_of(st.integers(0, 64), st.integers(0, FILE_BYTES + 8), UINT64, st.integers(-(2**64), -1))
RAW = pb.VideoFrameSampleFormat.RAW
ENCODINGS = st.one_of(
    st.just(RAW), st.just(RAW), st.sampled_from(list(pb.VideoFrameSampleFormat.Encoding.values()) + [99])
)
PIXELS = st.one_of(
    st.sampled_from(sorted(RAW_LAYOUTS)), st.sampled_from(list(pb.VideoFrameSampleFormat.PixelFormat.values()) + [77])
)


@pytest.fixture(scope="module")
def region_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_shm")
    (folder / "region").write_bytes(CONTENT.tobytes())
    return str(folder)


@pytest.fixture
def counted_reads(monkeypatch):
    """Every byte a pread asks for, summed."""
    asked = [0]
    real = os.preadv

    def preadv(fd, buffers, offset):
        asked[0] += sum(len(b) for b in buffers)
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv)
    return asked


def _descriptor(encoding: int, pixel: int, width: int, height: int, stride: int, dimensions: bool = True):
    media = pb.MediaDescriptor()
    sample = media.video_frame_sample_format
    sample.encoding, sample.pixel_format, sample.stride_bytes = encoding, pixel, stride
    if dimensions:
        sample.dimensions.width, sample.dimensions.height = width, height
    return media


def _frame_format(descriptor) -> FrameFormat | None:
    try:
        return FrameFormat.from_descriptor(descriptor)
    except FrameError as error:
        assert error.status in ("INVALID_ARGUMENT", "OUT_OF_RANGE") and error.message
        return None


@FUZZ
@given(
    encoding=ENCODINGS,
    pixel=PIXELS,
    width=SIDE,
    height=SIDE,
    stride=STRIDE,
    offset=OFFSET,
    length=SIZE,
    max_read=st.one_of(st.none(), st.integers(1, 5000)),
    plausible=st.booleans(),
)
def test_frames_from_hostile_descriptors_read_exactly_their_rows(
    region_file, counted_reads, encoding, pixel, width, height, stride, offset, length, max_read, plausible
):
    if plausible:  # half the examples: a RAW format that could fit the file, so that reads happen
        encoding, pixel = RAW, sorted(RAW_LAYOUTS)[pixel % len(RAW_LAYOUTS)]
        width, height, offset = width % 16 + 1, height % 16 + 1, offset % 256
        stride = 0 if stride % 2 else width * RAW_LAYOUTS[pixel][1] + stride % 40
    fmt = _frame_format(_descriptor(encoding, pixel, width, height, stride))
    if fmt is None:
        event("format refused")
        return
    raw = fmt.encoding == pb.VideoFrameSampleFormat.RAW
    if raw:  # what a format taken promises: dimensions within the limit, a stride at least a row
        assert 1 <= fmt.width <= MAX_SIDE and 1 <= fmt.height <= MAX_SIDE and fmt.stride >= fmt.row_bytes
        if length % 4 != 0:
            length = fmt.raw_size  # most often the frame's own size, so that reads happen
    region = SharedRegion.open("region", FILE_BYTES, fmt, owner_set(), max_read, shm_dir=region_file)
    counted_reads[0] = 0
    try:
        data = region.read(offset, length)
    except FrameError as error:
        assert error.status in ("INVALID_ARGUMENT", "OUT_OF_RANGE") and error.message
        assert counted_reads[0] == 0  # refused before anything was read
        event(f"{'RAW' if raw else 'encoded'} frame refused: {error.status}")
        return
    finally:
        region.close()
    # taken: the reference lies inside the region, and exactly the frame's bytes were read
    assert 0 <= offset and 0 < length and offset + length <= FILE_BYTES
    if raw:
        used = fmt.height * fmt.row_bytes
        expected = np.concatenate(
            [CONTENT[offset + k * fmt.stride : offset + k * fmt.stride + fmt.row_bytes] for k in range(fmt.height)]
        )
        assert length == fmt.raw_size
        frame = region.frame_format.decode(data)
        assert frame.shape == (fmt.height, fmt.width, 3)
    else:
        used, expected = length, CONTENT[offset : offset + length]
    assert max_read is None or used <= max_read
    assert counted_reads[0] == used and data.nbytes == used
    event(f"{'RAW' if raw else 'encoded'} frame read")
    assert np.array_equal(data, expected)


@FUZZ
@given(
    width=st.integers(1, 40),
    height=st.integers(1, 40),
    padding=st.integers(0, 50),
    layout=st.sampled_from(sorted(RAW_LAYOUTS)),
)
def test_a_packed_frame_decodes_as_its_strided_bytes_do(width, height, padding, layout):
    """A frame read row by row (packed) decodes to the pixels the same frame embedded (with its stride) does."""
    _, bpp, _ = RAW_LAYOUTS[layout]
    stride = width * bpp + padding
    fmt = FrameFormat.from_descriptor(_descriptor(RAW, layout, width, height, stride))
    strided = (np.arange(stride * height) % 253).astype(np.uint8)
    packed = strided.reshape(height, stride)[:, : width * bpp].copy()
    assert np.array_equal(fmt.packed().decode(packed.reshape(-1)), fmt.decode(strided))


@FUZZ
@given(
    register_offset=st.one_of(st.integers(0, 64), st.integers(0, FILE_BYTES - 1)),
    byte_size=st.one_of(st.integers(1, FILE_BYTES), st.just(FILE_BYTES)),
    offset=OFFSET,
    size=SIZE,
    negative_offset=st.booleans(),
    max_read=st.one_of(st.none(), st.integers(0, 5000)),
)
def test_region_spans_with_hostile_offsets_and_sizes(
    region_file, counted_reads, register_offset, byte_size, offset, size, negative_offset, max_read
):
    if register_offset + byte_size > FILE_BYTES:
        byte_size = FILE_BYTES - register_offset
    if negative_offset:
        offset = -offset - 1
    regions = ClientRegions(shm_dir=region_file)
    if max_read is not None:
        regions = regions.for_server(max_read, None)
    regions.register("r", "region", register_offset, byte_size)
    lease = regions.lease()
    try:
        region = lease.get("r")
        counted_reads[0] = 0
        try:
            data = lease.read(region, offset, size, "input x")
        except InvalidInput as error:
            assert error.message.startswith("input x: ")
            assert counted_reads[0] == 0
            event("span refused")
            return
        assert 0 <= offset and 0 <= size and offset + size <= byte_size
        assert max_read is None or size <= max_read
        assert counted_reads[0] == size and data.nbytes == size
        event("span read")
        assert np.array_equal(data, CONTENT[register_offset + offset : register_offset + offset + size])
    finally:
        lease.release()
        regions.close()


@FUZZ
@given(
    name=st.one_of(st.text(max_size=300), st.text(min_size=250, max_size=260)),
    key=st.one_of(st.sampled_from(["region", "/region"]), st.text(max_size=300)),
    offset=st.one_of(st.integers(-5, FILE_BYTES), UINT64),
    byte_size=st.one_of(st.integers(-5, FILE_BYTES + 5), UINT64),
)
def test_registrations_with_hostile_names_keys_and_sizes(region_file, name, key, offset, byte_size):
    """Any name, key, offset and size: registered (the name and key within 255 bytes, the span within the file) or
    refused with InvalidInput; never another exception."""
    regions = ClientRegions(shm_dir=region_file)
    try:
        regions.register(name, key, offset, byte_size)
    except InvalidInput as error:
        assert error.message
        event("registration refused")
        return
    finally:
        regions.close()
    event("registered")
    assert 0 < len(name.encode("utf-8", "surrogatepass")) <= 255
    assert key in ("region", "/region")
    assert 0 <= offset and 0 < byte_size and offset + byte_size <= FILE_BYTES
