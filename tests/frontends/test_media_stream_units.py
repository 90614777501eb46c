"""The media-stream extension's pieces without a server: the in-place reader of common sample messages agrees
with protobuf and leaves every other message to it; the shared region checks references before reading; the
mapping of outputs to inferences refuses outputs of the wrong kind."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mindserve import _dtypes
from mindserve._errors import StageFailed
from mindserve._frontends.media_stream.frames import FrameError, FrameFormat
from mindserve._frontends.media_stream.inferences import frame_inferences
from mindserve._frontends.media_stream.sample_wire import read_embedded
from mindserve._frontends.media_stream.shared_region import SharedRegion
from mindserve._frontends.shared_memory.client_file import owner_set
from mindserve._tensor import RawTensor
from support.messages import media_graph as pb

UINT64 = st.integers(0, 2**64 - 1)


@settings(max_examples=200, deadline=None)
@given(sequence=UINT64, timestamp=UINT64, frame=st.binary(max_size=300))
def test_the_in_place_reader_agrees_with_protobuf(sequence, timestamp, frame):
    data = pb.MediaStreamMessage(
        sequence_number=sequence, media_sample={"timestamp": timestamp, "content_bytes": {"bytes": frame}}
    ).SerializeToString()
    read = read_embedded(data)
    assert read is not None
    assert (read.sequence_number, read.timestamp, bytes(read.frame)) == (sequence, timestamp, frame)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_are_read_as_protobuf_reads_them_or_left_to_it(data):
    read = read_embedded(data)
    if read is None:
        return
    message = pb.MediaStreamMessage.FromString(data)
    assert message.WhichOneof("payload") == "media_sample"
    assert (read.sequence_number, read.timestamp, bytes(read.frame)) == (
        message.sequence_number,
        message.media_sample.timestamp,
        message.media_sample.content_bytes.bytes,
    )


@pytest.mark.parametrize(
    "message",
    [
        pb.MediaStreamMessage(sequence_number=1, media_stream_descriptor={"extension_configuration": "{}"}),
        pb.MediaStreamMessage(sequence_number=2, media_sample={"content_reference": {"length_bytes": 4}}),
        pb.MediaStreamMessage(
            sequence_number=2, media_sample={"content_bytes": {"bytes": b"x"}, "inferences": [{"subtype": "s"}]}
        ),
        pb.MediaStreamMessage(
            sequence_number=2, ack_sequence_number=1, media_sample={"content_bytes": {"bytes": b"x"}}
        ),
        pb.MediaStreamMessage(sequence_number=3),
    ],
)
def test_other_messages_are_left_to_protobuf(message):
    assert read_embedded(message.SerializeToString()) is None


def test_a_field_twice_or_a_cut_message_is_left_to_protobuf():
    data = pb.MediaStreamMessage(
        sequence_number=2, media_sample={"content_bytes": {"bytes": b"abc"}}
    ).SerializeToString()
    assert read_embedded(data + b"\x08\x05") is None  # sequence_number again
    assert read_embedded(data[:-1]) is None


@pytest.fixture
def region_file(tmp_path):
    path = tmp_path / "region"
    path.write_bytes(bytes(range(256)) * 4)
    return tmp_path, "region"


ENCODED = FrameFormat(pb.VideoFrameSampleFormat.PNG, 0, 0)  # samples of any length


def test_a_region_reads_what_references_name_and_refuses_the_rest(region_file):
    folder, name = region_file
    region = SharedRegion.open(name, 1024, ENCODED, owner_set(), shm_dir=str(folder))
    try:
        assert region.read(256, 3).tolist() == [0, 1, 2]
        assert region.read(1021, 3).tolist() == [253, 254, 255]
        for offset, length in ((1022, 3), (2**64 - 1, 2), (0, 0), (-1, 2), (1025, 1)):
            with pytest.raises(FrameError) as refused:
                region.read(offset, length)
            assert refused.value.status == "INVALID_ARGUMENT"
        os.truncate(folder / name, 100)
        with pytest.raises(FrameError, match="ends before byte 200: the client cut its file short"):
            region.read(100, 100)
    finally:
        region.close()
    with pytest.raises(FrameError, match="closed"):
        region.read(0, 1)


def test_a_raw_frame_is_read_row_by_row_never_its_stride_gaps(region_file, monkeypatch):
    """Two RGB24 pixels a row, three rows 100 bytes apart: 18 bytes are read (the rows), not 300."""
    folder, name = region_file
    fmt = FrameFormat(pb.VideoFrameSampleFormat.RAW, 2, 3, 3, (0, 1, 2), 100)
    region = SharedRegion.open(name, 1024, fmt, owner_set(), shm_dir=str(folder))
    asked: list[int] = []
    real = os.preadv

    def counting_preadv(fd, buffers, offset):
        asked.append(sum(map(len, buffers)))
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", counting_preadv)
    try:
        assert region.check(10, 300) == 18
        rows = region.read(10, 300)
        assert rows.tolist() == [*range(10, 16), *range(110, 116), *range(210, 216)]
        assert sum(asked) == 18
        frame = region.frame_format.decode(rows)
        assert frame.shape == (3, 2, 3) and frame[2, 1].tolist() == [213, 214, 215]
        with pytest.raises(FrameError, match="content_reference of 299 bytes, a frame is 300"):
            region.read(0, 299)
    finally:
        region.close()
    bounded = SharedRegion.open(name, 1024, fmt, owner_set(), max_read=17, shm_dir=str(folder))
    try:
        with pytest.raises(FrameError) as refused:
            bounded.read(0, 300)
        assert (refused.value.status, refused.value.message) == (
            "OUT_OF_RANGE",
            "a frame of 18 bytes in shared memory is more than the 17 a message may carry on this "
            "server (max_msg_mb_size)",
        )
    finally:
        bounded.close()


def test_files_of_other_owners_are_refused(region_file):
    folder, name = region_file
    with pytest.raises(FrameError) as refused:
        SharedRegion.open(name, 16, ENCODED, frozenset({os.geteuid() + 1}), shm_dir=str(folder))
    assert (
        refused.value.message == "the shared memory region named by handle_name is owned by a user the server "
        "does not take files of: its own, or one listed in client_shm_owners"
    )
    SharedRegion.open(name, 16, ENCODED, frozenset({os.geteuid() + 1, os.geteuid()}), shm_dir=str(folder)).close()


@pytest.mark.parametrize("name", ["", "/", "..", "a/b", "/dev/shm/x", "mindserve-0123", "x\0y", "x" * 256])
def test_names_that_are_no_client_region_are_refused_before_any_open(region_file, name):
    folder, _ = region_file
    with pytest.raises(FrameError) as refused:
        SharedRegion.open(name, 16, ENCODED, owner_set(), shm_dir=str(folder))
    assert "handle_name" in refused.value.message
    assert name.strip("/") not in refused.value.message or not name.strip("/")


def _text(value: str) -> RawTensor:
    return RawTensor(_dtypes.MS_STRING, (), value.encode())


def _array(value: np.ndarray) -> RawTensor:
    code = _dtypes.code_of_array(value)
    assert code is not None, value.dtype
    return RawTensor(code, value.shape, value.tobytes())


def test_outputs_become_classifications_and_entities():
    (found,) = frame_inferences({"label": _text("cat"), "confidence": _array(np.float32(0.5))})
    assert (found.type, found.classification.tag.value, found.classification.tag.confidence) == (
        pb.Inference.CLASSIFICATION,
        "cat",
        0.5,
    )
    (entity,) = frame_inferences({"label": _text("cat"), "box": _array(np.array([0.1, 0.2, 0.3, 0.4], np.float32))})
    assert entity.type == pb.Inference.ENTITY and round(entity.entity.box.h, 3) == 0.4
    assert frame_inferences({"other": _text("x")}) == []


@pytest.mark.parametrize(
    "outputs, message",
    [
        (
            {"label": _array(np.float32(1.5))},
            "output 'label' should be a string or an integer array of class ids, got float32 []",
        ),
        (
            {"label": _text("a"), "box": _array(np.zeros(3, np.float32))},
            "output 'box' should be 1 x 4 number(s) for the frame's inferences, got float32 [3]",
        ),
        (
            {"label": _array(np.array([1, 2])), "confidence": _text("high")},
            "output 'confidence' should be 2 number(s) for the frame's inferences, got high",
        ),
    ],
)
def test_outputs_of_the_wrong_kind_fail_with_their_name(outputs, message):
    with pytest.raises(StageFailed) as failed:
        frame_inferences(outputs)
    assert failed.value.message == message
