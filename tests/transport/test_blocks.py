"""Message blocks (mindserve/_transport/blocks.py): what BlockWriter lays out BlockReader reads back, stacked or one
value per instance; and a block whose header lies about its bytes gives BlockError, with the exact text, and
never a read outside [offset, offset + size). Every block here sits inside a larger buffer whose bytes around it
are tempting (valid data, the rest of a JSON header), so that a reader that strayed outside would succeed
instead of raising."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest

from mindserve import _dtypes
from mindserve._tensor import RawTensor
from mindserve._transport import blocks
from mindserve._transport.blocks import PREFIX, BlockError, BlockReader, BlockWriter

OFFSET = 192  # where the block starts in its buffer (arena blocks are 64-byte aligned)
GUARD = 0x5A
F32 = _dtypes.MS_FLOAT32


def align(n: int) -> int:
    return (n + 63) // 64 * 64


def place(writer: BlockWriter, header: dict, tail: int = 256) -> tuple[bytearray, int]:
    """Write the block into a guarded buffer at OFFSET; the buffer and the block size."""
    head, size = writer.encode(header)
    buf = bytearray([GUARD]) * (OFFSET + size + tail)
    writer.write(memoryview(buf), OFFSET, head)
    assert buf[:OFFSET] == bytearray([GUARD]) * OFFSET and buf[OFFSET + size :] == bytearray([GUARD]) * tail
    return buf, size


def hand_made(header, data: bytes = b"", head_len=None, size=None, tail: bytes = b"") -> tuple[memoryview, int]:
    """A block built byte by byte: prefix, header (JSON of ``header``, or the bytes given), padding, ``data``;
    then ``tail`` right after it in the buffer. ``head_len`` and ``size`` override the true values."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    block = PREFIX.pack(len(head) if head_len is None else head_len, 0) + head
    block += bytes(align(len(block)) - len(block)) + data
    size = len(block) if size is None else size
    buf = bytearray([GUARD]) * OFFSET + block + tail + bytes(64)  # what lies past `size` is outside the block
    return memoryview(buf), size


def reader_of(header, data: bytes = b"", head_len=None, size=None, tail: bytes = b"") -> BlockReader:
    view, size = hand_made(header, data, head_len, size, tail)
    return BlockReader(view, OFFSET, size)


def stacked_column(reader: BlockReader, desc, count: int) -> tuple[int, tuple, int]:
    """``reader.column`` of a stacked descriptor: ``(dtype, row_shape, position)``."""
    column = reader.column(desc, count)
    assert isinstance(column, tuple), column
    return column


def per_instance_column(reader: BlockReader, desc, count: int) -> list[tuple[int, tuple, int, int]]:
    """``reader.column`` of a per-instance descriptor: ``(dtype, shape, position, nbytes)`` per instance."""
    column = reader.column(desc, count)
    assert isinstance(column, list), column
    return column


def block_error(fn, *args) -> str:
    with pytest.raises(BlockError) as info:
        fn(*args)
    return str(info.value)


def raw(code: int, array_or_bytes, shape=None) -> RawTensor:
    if isinstance(array_or_bytes, np.ndarray):
        return RawTensor(code, array_or_bytes.shape, array_or_bytes.tobytes())
    return RawTensor(code, shape if shape is not None else (), array_or_bytes)


# -------------------------------------------------------------------------------------------------- round trips


def test_same_shaped_raw_tensors_are_stacked_and_read_back():
    xs = [raw(F32, np.arange(6, dtype="<f4").reshape(2, 3) + 10 * i) for i in range(4)]
    ys = [raw(_dtypes.MS_INT64, np.array(-i, "<i8")) for i in range(4)]
    writer = BlockWriter()
    x_desc = blocks.raw_column(writer, xs)
    y_desc = blocks.raw_column(writer, ys)
    assert x_desc == ["s", F32, [2, 3], 0]
    assert y_desc == ["s", _dtypes.MS_INT64, [], 128]  # 4 * 24 bytes, then the next 64-byte boundary
    header = {"m": "predict", "n": 4, "in": {"x": x_desc, "y": y_desc}}
    buf, size = place(writer, header)
    head = json.dumps(header, separators=(",", ":")).encode()
    assert size == align(PREFIX.size + len(head)) + 128 + 32

    reader = BlockReader(memoryview(buf), OFFSET, size)
    assert reader.header == header
    data_start = OFFSET + align(PREFIX.size + len(head))
    assert reader.column(x_desc, 4) == (F32, (2, 3), data_start)
    assert reader.column(y_desc, 4) == (_dtypes.MS_INT64, (), data_start + 128)
    rows = blocks.raw_rows(reader, x_desc, 4)
    assert [(r.dtype, r.shape, bytes(r.data)) for r in rows] == [(F32, (2, 3), x.data) for x in xs]
    stacked = reader.array(F32, (4, 2, 3), data_start)
    np.testing.assert_array_equal(stacked, np.stack([np.frombuffer(x.data, "<f4").reshape(2, 3) for x in xs]))
    assert [bytes(r.data) for r in blocks.raw_rows(reader, y_desc, 4)] == [y.data for y in ys]


@pytest.mark.parametrize("code", sorted(_dtypes.NUMPY_OF))
def test_every_numeric_dtype_round_trips_bit_exact(code):
    dtype = _dtypes.NUMPY_OF[code]
    rng = np.random.default_rng(code)
    arrays = [np.frombuffer(rng.bytes(3 * dtype.itemsize), dtype) for _ in range(3)]
    if dtype == np.bool_:
        arrays = [a.astype(bool) for a in arrays]
    writer = BlockWriter()
    desc = blocks.raw_column(writer, [raw(code, a) for a in arrays])
    buf, size = place(writer, {"n": 3, "in": {"a": desc}})
    reader = BlockReader(memoryview(buf), OFFSET, size)
    assert [bytes(r.data) for r in blocks.raw_rows(reader, desc, 3)] == [a.tobytes() for a in arrays]


def test_differing_shapes_and_dtypes_become_one_value_per_instance():
    values = [np.arange(2, dtype="<f8"), np.arange(3, dtype="<f8"), np.array(7.5, "<f8")]
    mixed = [np.ones(2, "<f4"), np.ones(2, "<i4")]  # same shape, different dtypes
    writer = BlockWriter()
    desc = blocks.raw_column(writer, [raw(_dtypes.MS_FLOAT64, v) for v in values])
    mixed_desc = blocks.raw_column(writer, [raw(F32, mixed[0]), raw(_dtypes.MS_INT32, mixed[1])])
    assert desc[0] == "e" and [d[:2] for d in desc[1]] == [
        [_dtypes.MS_FLOAT64, [2]],
        [_dtypes.MS_FLOAT64, [3]],
        [_dtypes.MS_FLOAT64, []],
    ]
    assert [d[2] % 64 for d in desc[1] + mixed_desc[1]] == [0] * 5  # every value 64-byte aligned
    buf, size = place(writer, {"n": 3, "in": {"v": desc, "m": mixed_desc}})
    reader = BlockReader(memoryview(buf), OFFSET, size)
    column = per_instance_column(reader, desc, 3)
    assert [len(c) for c in column] == [4] * 3
    for d, expected in zip(column, values):
        got = reader.value(*d)
        assert isinstance(got, np.ndarray), got
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    assert [(r.dtype, r.shape, bytes(r.data)) for r in blocks.raw_rows(reader, mixed_desc, 2)] == [
        (F32, (2,), mixed[0].tobytes()),
        (_dtypes.MS_INT32, (2,), mixed[1].tobytes()),
    ]


def test_strings_and_bytes_are_per_instance_values():
    strings = [raw(_dtypes.MS_STRING, "héllo wörld".encode()), raw(_dtypes.MS_STRING, b"")]
    byte_values = [raw(_dtypes.MS_BYTES, b"\x00\xff\x10"), raw(_dtypes.MS_BYTES, b"\x00\xff\x10")]
    writer = BlockWriter()
    s_desc = blocks.raw_column(writer, strings)
    b_desc = blocks.raw_column(writer, byte_values)  # text is never stacked, even when alike
    assert s_desc[0] == "e" and b_desc[0] == "e"
    buf, size = place(writer, {"n": 2, "in": {"s": s_desc, "b": b_desc}})
    reader = BlockReader(memoryview(buf), OFFSET, size)
    assert [reader.value(*d) for d in per_instance_column(reader, s_desc, 2)] == ["héllo wörld", ""]
    assert [reader.value(*d) for d in per_instance_column(reader, b_desc, 2)] == [b"\x00\xff\x10"] * 2
    assert [(r.dtype, bytes(r.data)) for r in blocks.raw_rows(reader, s_desc, 2)] == [
        (_dtypes.MS_STRING, "héllo wörld".encode()),
        (_dtypes.MS_STRING, b""),
    ]


def test_worker_side_descriptors_round_trip():
    writer = BlockWriter()
    pieces = [np.arange(6, dtype="<f4").reshape(2, 3), np.full((1, 3), -1, "<f4")]
    stacked = blocks.stacked_descriptor(writer, pieces, (3,), F32)
    values = [
        blocks.value_descriptor(writer, np.array([[1, 2]], "<i4")),
        blocks.value_descriptor(writer, "tëxt"),
        blocks.value_descriptor(writer, b"\x01\x02"),
    ]
    assert stacked == ["s", F32, [3], 0]
    assert values[1][:2] == [_dtypes.MS_STRING, []] and values[1][3] == len("tëxt".encode())
    buf, size = place(writer, {"n": 3, "out": {"y": stacked, "v": ["e", values]}})
    reader = BlockReader(memoryview(buf), OFFSET, size)
    code, shape, position = stacked_column(reader, stacked, 3)
    np.testing.assert_array_equal(reader.array(code, (3, *shape), position), np.concatenate(pieces))
    got = [reader.value(*d) for d in per_instance_column(reader, ["e", values], 3)]
    np.testing.assert_array_equal(got[0], np.array([[1, 2]], "<i4"))
    assert got[1:] == ["tëxt", b"\x01\x02"]


def test_empty_tensors_and_an_empty_block():
    writer = BlockWriter()
    desc = blocks.raw_column(writer, [raw(F32, np.zeros((0, 4), "<f4"))] * 2)
    assert desc == ["s", F32, [0, 4], 0] and writer.data_size == 0
    buf, size = place(writer, {"n": 2, "in": {"x": desc}})
    reader = BlockReader(memoryview(buf), OFFSET, size)
    assert [(r.shape, bytes(r.data)) for r in blocks.raw_rows(reader, desc, 2)] == [((0, 4), b"")] * 2
    code, shape, position = stacked_column(reader, desc, 2)
    assert reader.array(code, (2, *shape), position).shape == (2, 0, 4)

    reader = reader_of({}, size=64)  # a header and no data at all
    assert reader.header == {}
    assert reader.column(["e", [[_dtypes.MS_BYTES, [], 0, 0]]], 1) == [(_dtypes.MS_BYTES, (), OFFSET + 64, 0)]
    assert (
        block_error(reader.column, ["e", [[_dtypes.MS_BYTES, [], 0, 1]]], 1) == "tensor reaches past its message block"
    )


# ------------------------------------------------------------------------------------------------ hostile blocks


@pytest.mark.parametrize("size", [0, 1, 7])
def test_a_block_shorter_than_its_prefix(size):
    view, _ = hand_made({})
    assert block_error(BlockReader, view, OFFSET, size) == "message block too short"


def test_a_header_reaching_past_the_block():
    head = b'{"n":1}'
    # the block ends one byte before the header does; the buffer goes on with the header's last byte
    assert (
        block_error(reader_of, head, b"", None, PREFIX.size + len(head) - 1) == "message header reaches past its block"
    )
    # a length one past the block's end, where the buffer holds more bytes
    assert (
        block_error(reader_of, head, b"", len(head) + 1, PREFIX.size + len(head))
        == "message header reaches past its block"
    )
    for head_len in (57, 2**31, 2**32 - 1):
        assert block_error(reader_of, head, b"", head_len, 64) == "message header reaches past its block"


@pytest.mark.parametrize(
    "head",
    [
        b'{"n":',
        b"",
        b"\xff\xfe",
        b"{'n': 1}",
        b'{"n":1}}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b"1" * 5000,
    ],
)
def test_a_header_that_is_not_json(head):
    message = block_error(reader_of, head)
    assert message.startswith("message header is not JSON: ")


@pytest.mark.parametrize("head", [b"[1,2]", b'"x"', b"null", b"3", b"true"])
def test_a_header_that_is_not_an_object(head):
    assert block_error(reader_of, head) == "message header is not an object"


def test_data_starting_past_the_block():
    assert block_error(reader_of, b"{}", b"", None, 20) == "message data starts past its block"
    assert block_error(reader_of, b"{}", b"", None, 63) == "message data starts past its block"
    assert reader_of(b"{}", b"", size=64).header == {}


def floats(n: int, start: float = 0.0) -> bytes:
    return (np.arange(n, dtype="<f4") + start).tobytes()


def test_stacked_rows_reaching_past_the_block():
    # 4 rows of float32[2] fill the data; valid floats go on in the buffer after the block
    reader = reader_of({}, floats(8), tail=floats(64, 100))
    end = OFFSET + 64 + 32
    assert reader.column(["s", F32, [2], 0], 4) == (F32, (2,), OFFSET + 64)
    assert reader.column(["s", F32, [2], 8], 3) == (F32, (2,), OFFSET + 72)  # ends right at the block's end
    assert stacked_column(reader, ["s", F32, [], 28], 1)[2] + 4 == end
    for desc, count in [
        (["s", F32, [2], 0], 5),
        (["s", F32, [2], 8], 4),
        (["s", F32, [2], 32], 1),
        (["s", F32, [], 29], 1),
        (["s", F32, [9], 0], 1),
        (["s", _dtypes.MS_FLOAT64, [2], 0], 3),
        (["s", F32, [2], 2**64], 1),
        (["s", F32, [2**62, 2**62], 0], 1),
    ]:
        assert block_error(reader.column, desc, count) == "tensor reaches past its message block", desc


BAD_OFFSETS = [-1, -64, -(2**63), True, False, 0.0, 1.5, float("nan"), float("inf"), "0", None, [0], {"o": 0}]


@pytest.mark.parametrize("offset", BAD_OFFSETS, ids=repr)
def test_offsets_that_are_not_natural_numbers(offset):
    reader = reader_of({}, floats(16), tail=floats(16))
    assert block_error(reader.column, ["s", F32, [2], offset], 1) == "tensor reaches past its message block"
    assert block_error(reader.column, ["e", [[F32, [2], offset, 8]]], 1) == "tensor reaches past its message block"
    assert (
        block_error(reader.column, ["e", [[_dtypes.MS_BYTES, [], offset, 0]]], 1)
        == "tensor reaches past its message block"
    )


@pytest.mark.parametrize("nbytes", [0, 4, 7, 9, 16])
def test_nbytes_that_do_not_match_the_dtype_and_shape(nbytes):
    reader = reader_of({}, floats(16))
    desc = [F32, [2], 0, nbytes]
    assert block_error(reader.column, ["e", [desc]], 1) == f"tensor descriptor {desc!r} does not match its byte size"
    empty = [F32, [0, 3], 0, nbytes]
    if nbytes:
        assert (
            block_error(reader.column, ["e", [empty]], 1) == f"tensor descriptor {empty!r} does not match its byte size"
        )


@pytest.mark.parametrize("nbytes", [-1, -8, True, 8.0, "8", None, [8]], ids=repr)
def test_nbytes_that_are_not_natural_numbers(nbytes):
    reader = reader_of({}, floats(16))
    for desc in ([F32, [2], 0, nbytes], [_dtypes.MS_BYTES, [], 0, nbytes]):
        assert block_error(reader.column, ["e", [desc]], 1) == f"bad tensor descriptor {desc!r}"


@pytest.mark.parametrize(
    "code", [0, 13, 14, 15, -1, 99, 2**64, True, False, 11.0, "11", None, [11], {"c": 11}], ids=repr
)
def test_unknown_dtype_codes_in_a_stacked_column(code):
    reader = reader_of({}, floats(16))
    desc = ["s", code, [2], 0]
    assert block_error(reader.column, desc, 1) == f"bad stacked column {desc!r}"


@pytest.mark.parametrize(
    "code", [0, 15, -1, 99, 2**64, True, False, 11.0, 13.0, 14.0, "13", None, [11], {"c": 11}], ids=repr
)
def test_unknown_dtype_codes_in_a_value(code):
    reader = reader_of({}, floats(16))
    desc = [code, [2], 0, 8]
    assert block_error(reader.column, ["e", [desc]], 1) == f"bad tensor descriptor {desc!r}"


@pytest.mark.parametrize(
    "shape",
    [[-1, 4], [2, -3], [2.0], [True], [None], [[2]], "abc", None, 5, {"d": 2}, [-1] * 300],
    ids=lambda s: repr(s)[:30],
)
def test_shapes_that_are_not_lists_of_natural_numbers(shape):
    reader = reader_of({}, floats(16))
    expected = f"bad tensor shape {str(shape)[:200]}"
    assert block_error(reader.column, ["s", F32, shape, 0], 1) == expected
    assert block_error(reader.column, ["e", [[F32, shape, 0, 8]]], 1) == expected
    assert len(expected) <= len("bad tensor shape ") + 200


def test_a_value_column_whose_count_does_not_match():
    reader = reader_of({}, floats(16))
    desc = ["e", [[F32, [1], 0, 4], [F32, [1], 4 * 16 - 4, 4]]]
    assert len(reader.column(desc, 2)) == 2
    for count in (0, 1, 3):
        assert block_error(reader.column, desc, count) == f"bad column descriptor {str(desc)[:200]}"
    long = ["e", [[F32, [1], 0, 4]] * 100]
    message = block_error(reader.column, long, 99)
    assert message == f"bad column descriptor {str(long)[:200]}" and len(message) == len("bad column descriptor ") + 200


@pytest.mark.parametrize(
    "desc",
    [
        ["s", F32, [2]],
        ["s", F32, [2], 0, 0],
        ["x", F32, [2], 0],
        ["e"],
        ["e", "abc"],
        ["e", [], 0],
        {"s": 1},
        "s",
        None,
        5,
        [],
    ],
    ids=repr,
)
def test_malformed_column_descriptors(desc):
    reader = reader_of({}, floats(16))
    assert block_error(reader.column, desc, 1) == f"bad column descriptor {str(desc)[:200]}"


@pytest.mark.parametrize("inner", [[F32, [1], 0], [F32, [1], 0, 4, 4], 5, "x", None, {"a": 1}], ids=repr)
def test_malformed_value_descriptors(inner):
    reader = reader_of({}, floats(16))
    assert block_error(reader.column, ["e", [inner]], 1) == f"bad tensor descriptor {str(inner)[:200]}"


def test_a_string_value_that_is_not_utf8():
    reader = reader_of({}, b"\xff\xfeok")
    [d] = per_instance_column(reader, ["e", [[_dtypes.MS_STRING, [], 0, 4]]], 1)
    assert block_error(reader.value, *d) == "string tensor is not UTF-8"
    assert bytes(reader.raw(*d).data) == b"\xff\xfeok"  # the master passes the bytes on untouched


# ------------------------------------------------------------------------------------------- confinement, fuzzed

CODES = [*range(-1, 16), True, 11.0, "11", None, [11]]
SHAPES = [[], [0], [1], [2], [3, 2], [2, 0, 5], [2**40], [-1], [1.0], None, "2"]


def check_confined(reader: BlockReader, start: int, end: int, desc, count: int) -> None:
    """``column`` either raises BlockError or describes bytes inside [start, end) only; reading them then
    raises nothing else."""
    try:
        column = reader.column(desc, count)
    except BlockError:
        return
    if isinstance(column, list):
        assert len(column) == count
        for code, shape, position, nbytes in column:
            assert start <= position and position + nbytes <= end, desc
            try:
                value = reader.value(code, shape, position, nbytes)
            except BlockError:
                continue
            if isinstance(value, np.ndarray):
                assert value.nbytes == nbytes
    else:
        code, shape, position = column
        nbytes = count * math.prod(shape) * _dtypes.NUMPY_OF[code].itemsize
        assert start <= position and position + nbytes <= end, desc
        assert reader.array(code, (count, *shape), position).nbytes == nbytes


def test_random_descriptors_never_reach_outside_the_block():
    rng = random.Random(5)
    data = bytes(rng.getrandbits(8) for _ in range(200))
    view, size = hand_made({}, data, tail=floats(256))
    reader = BlockReader(view, OFFSET, size)
    start, end = OFFSET + 64, OFFSET + size

    def offset():
        return rng.choice([0, 1, 8, 64, 100, 199, 200, 201, 2**63, -8, rng.randrange(0, 260), True, 2.0])

    for _ in range(3000):
        count = rng.randrange(0, 5)
        if rng.random() < 0.4:
            desc = ["s", rng.choice(CODES), rng.choice(SHAPES), offset()]
        else:
            values = []
            for _ in range(count + (rng.random() < 0.1)):
                code, shape = rng.choice(CODES), rng.choice(SHAPES)
                nbytes = rng.choice([0, 1, 4, 8, 24, 200, -1, 2**64, rng.randrange(0, 210)])
                if (
                    rng.random() < 0.5
                    and isinstance(code, int)
                    and code in _dtypes.NUMPY_OF
                    and isinstance(shape, list)
                    and all(isinstance(d, int) and d >= 0 for d in shape)
                ):
                    nbytes = math.prod(shape) * _dtypes.NUMPY_OF[code].itemsize  # consistent, maybe too big
                values.append([code, shape, offset(), nbytes])
            desc = ["e", values]
        check_confined(reader, start, end, desc, count)


def test_corrupted_blocks_give_block_error_or_a_confined_read():
    writer = BlockWriter()
    columns = {
        "x": blocks.raw_column(writer, [raw(F32, np.arange(4, dtype="<f4") + i) for i in range(3)]),
        "s": blocks.raw_column(writer, [raw(_dtypes.MS_STRING, f"value {i}".encode()) for i in range(3)]),
    }
    buf, size = place(writer, {"m": "predict", "n": 3, "in": columns}, tail=0)
    head_end = OFFSET + PREFIX.size + len(json.dumps({"m": "predict", "n": 3, "in": columns}, separators=(",", ":")))
    rng = random.Random(11)
    replacements = b'0123456789-.,:[]{}"esntx \xff'
    for _ in range(1500):
        block = bytearray(buf)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(OFFSET, head_end)
            block[at] = rng.choice(replacements) if at >= OFFSET + PREFIX.size else rng.getrandbits(8)
        block += floats(64)  # tempting bytes after the block
        try:
            reader = BlockReader(memoryview(block), OFFSET, size)
        except BlockError:
            continue
        header = reader.header
        assert isinstance(header, dict)
        head_len, _ = PREFIX.unpack(block[OFFSET : OFFSET + PREFIX.size])
        inputs = header.get("in")
        if isinstance(inputs, dict):
            for desc in inputs.values():
                check_confined(reader, OFFSET + align(PREFIX.size + head_len), OFFSET + size, desc, 3)


# ------------------------------------------------------------------------------------- header caches (fast reads)


def test_block_header_gives_the_header_bytes_and_the_data_start():
    view, size = hand_made({"n": 1}, floats(4), tail=floats(16))
    head = json.dumps({"n": 1}).encode()
    assert blocks.block_header(view, OFFSET, size) == (head, align(PREFIX.size + len(head)))
    assert blocks.block_header(bytes(view), OFFSET, size) == (head, align(PREFIX.size + len(head)))


@pytest.mark.parametrize("size", [0, 1, PREFIX.size - 1])
def test_block_header_of_a_block_shorter_than_its_prefix(size):
    view, _ = hand_made({"n": 1}, floats(4))
    assert blocks.block_header(view, OFFSET, size) is None


def test_block_header_whose_padding_reaches_past_the_block():
    # the general reader refuses a block whose data would start past it: so does block_header
    view, size = hand_made(b"{}", size=PREFIX.size + 2, tail=b"{}" * 40)
    assert blocks.block_header(view, OFFSET, size) is None
    assert block_error(BlockReader, view, OFFSET, size) == "message data starts past its block"
    view, size = hand_made(b"{}", head_len=1000, tail=b" " * 2000)
    assert blocks.block_header(view, OFFSET, size) is None
    assert block_error(BlockReader, view, OFFSET, size) == "message header reaches past its block"
    view, size = hand_made(b"{}")  # exactly the prefix, the header and its padding: no data
    assert size == 64 and blocks.block_header(view, OFFSET, size) == (b"{}", 64)


def test_stacked_columns_spans_and_the_size_they_need():
    columns = {"y": ["s", F32, [2, 3], 0], "n": ["s", _dtypes.MS_INT64, [], 128], "e": ["s", F32, [0], 64]}
    found = blocks.stacked_columns(columns, 4, 64)
    assert found is not None
    spans, needed = found
    assert spans == {
        "y": blocks.StackedColumn(np.dtype("<f4"), F32, (2, 3), 64, 96),
        "n": blocks.StackedColumn(np.dtype("<i8"), _dtypes.MS_INT64, (), 192, 32),
        "e": blocks.StackedColumn(np.dtype("<f4"), F32, (0,), 128, 0),
    }
    assert needed == 64 + 128 + 32
    assert blocks.stacked_columns({}, 3, 128) == ({}, 128)
    assert blocks.stacked_columns({"y": ["s", F32, [2], 0]}, 0, 64) == (
        {"y": blocks.StackedColumn(np.dtype("<f4"), F32, (2,), 64, 0)},
        64,
    )


@pytest.mark.parametrize(
    "columns, count",
    [
        ({"y": ["e", [[F32, [2], 0, 8]]]}, 1),  # one value per instance
        ({"y": ["s", F32, [2], 0], "z": ["e", []]}, 0),
        ({"y": ["s", F32, [2]]}, 1),
        ({"y": ["s", F32, [2], 0, 0]}, 1),
        ({"y": ["s", _dtypes.MS_STRING, [], 0]}, 1),
        ({"y": ["s", True, [2], 0]}, 1),
        ({"y": ["s", 11.0, [2], 0]}, 1),
        ({"y": ["s", F32, [-1], 0]}, 1),
        ({"y": ["s", F32, [2.0], 0]}, 1),
        ({"y": ["s", F32, "2", 0]}, 1),
        ({"y": ["s", F32, [2], -64]}, 1),
        ({"y": ["s", F32, [2], True]}, 1),
        ({"y": ["s", F32, [2], 0.0]}, 1),
        ({"y": ["s", F32, [2], 0]}, -1),
        ({"y": ["s", F32, [2], 0]}, True),
        ({"y": ["s", F32, [2], 0]}, 1.0),
        ({"y": ["s", F32, [2], 0]}, None),
        ([["s", F32, [2], 0]], 1),
        (None, 1),
    ],
    ids=repr,
)
def test_stacked_columns_refuses_anything_else(columns, count):
    assert blocks.stacked_columns(columns, count, 64) is None


def reply_bytes(writer: BlockWriter, header: dict) -> bytes:
    head, size = writer.encode(header)
    buf = bytearray(size)
    writer.write(memoryview(buf), 0, head)
    return bytes(buf)


def stacked_reply(ys: np.ndarray, ns: np.ndarray) -> bytes:
    """A reply in which every instance succeeded, its outputs stacked (as the worker writes one)."""
    from mindserve._workers.columns import Column
    from mindserve._workers.job_io import reply_block

    writer, header = reply_block("m", len(ys), {"y": Column([ys]), "n": Column([ns])}, [None] * len(ys))
    assert header["err"] == [] and header["out"]["y"][0] == "s" and header["out"]["n"][0] == "s"
    return reply_bytes(writer, header)


def decoded(results) -> list:
    from mindserve._errors import ServingError

    return [
        (r.code, r.message)
        if isinstance(r, ServingError)
        else {n: (t.dtype, tuple(t.shape), bytes(t.data)) for n, t in r.items()}
        for r in results
    ]


def expected_rows(ys: np.ndarray, ns: np.ndarray) -> list:
    return [{"y": (F32, ys.shape[1:], y.tobytes()), "n": (_dtypes.MS_INT64, (), n.tobytes())} for y, n in zip(ys, ns)]


YS = np.arange(12, dtype="<f4").reshape(3, 2, 2) / 4
NS = np.array([7, -8, 9], "<i8")


def test_a_stacked_reply_is_read_whole():
    from mindserve._tensor import StackedResults
    from mindserve._transport.jobs import decode_reply as _decode_reply
    from mindserve._transport.jobs import stacked_reply as _stacked_reply

    data = stacked_reply(YS, NS)
    results = _stacked_reply(memoryview(data), 3, ["y", "n"])
    assert isinstance(results, StackedResults) and len(results) == 3
    assert bytes(results.outputs["y"].data) == YS.tobytes() and bytes(results.outputs["n"].data) == NS.tobytes()
    assert (results.outputs["y"].dtype, results.outputs["y"].row_shape) == (F32, (2, 2))
    assert decoded(_decode_reply(memoryview(data), 3, ["y", "n"])) == expected_rows(YS, NS)
    assert decoded(_decode_reply(memoryview(data), 3, ["n"])) == [{"n": r["n"]} for r in expected_rows(YS, NS)]


FRESH_ROWS = itertools.count(101)


@pytest.mark.parametrize("cut", [1, 8, 24, "data", "header"])
@pytest.mark.parametrize("big_first", [True, False])
def test_a_truncated_reply_is_not_read_through_the_cached_header(cut, big_first):
    from mindserve._transport.jobs import decode_reply as _decode_reply
    from mindserve._transport.jobs import stacked_reply as _stacked_reply

    # rows of a length no other test uses: a header never seen before, so that which block comes first decides
    # what is parsed (and cached) from it
    ys, ns = np.arange(3 * next(FRESH_ROWS), dtype="<f4").reshape(3, -1) - 7.5, NS
    data = stacked_reply(ys, ns)
    head_len, _ = PREFIX.unpack_from(data, 0)
    start = align(PREFIX.size + head_len)
    size = {"data": start, "header": start - 1}.get(cut, len(data) - cut if isinstance(cut, int) else 0)
    short = memoryview(data[:size])
    if big_first:  # the header is known (parsed and cached) from the whole block first
        assert decoded(_stacked_reply(memoryview(data), 3, ["y", "n"])) == expected_rows(ys, ns)
    assert _stacked_reply(short, 3, ["y", "n"]) is None
    expected = "message data starts past its block" if cut == "header" else "tensor reaches past its message block"
    assert block_error(_decode_reply, short, 3, ["y", "n"]) == expected
    # a short block of a known header changes nothing for the whole one
    assert decoded(_decode_reply(memoryview(data), 3, ["y", "n"])) == expected_rows(ys, ns)
    assert _stacked_reply(short, 3, ["y", "n"]) is None


def test_a_truncated_reply_inside_a_larger_buffer():
    # the master copies each reply out on its own, but the size check must not lean on that: what follows the
    # block in the same buffer is not part of it
    from mindserve._transport.jobs import stacked_reply as _stacked_reply

    data = stacked_reply(YS + 300, NS)
    view = memoryview(data + bytes(64))[: len(data) - 1]
    assert _stacked_reply(view, 3, ["y", "n"]) is None


def test_replies_of_one_header_each_read_their_own_bytes():
    from mindserve._transport.jobs import decode_reply as _decode_reply

    first, second = stacked_reply(YS, NS), stacked_reply(YS * -3, NS * 5)
    assert first[:64] == second[:64]  # the same header
    a = _decode_reply(memoryview(first), 3, ["y", "n"])
    b = _decode_reply(memoryview(second), 3, ["y", "n"])
    assert decoded(a) == expected_rows(YS, NS) and decoded(b) == expected_rows(YS * -3, NS * 5)
    longer = _decode_reply(memoryview(second + b"\x01" * 100), 3, ["y", "n"])  # room to spare: still stacked
    assert decoded(longer) == expected_rows(YS * -3, NS * 5)


def test_a_reply_with_errors_is_not_stacked():
    from mindserve._errors import FAILED, ServingError
    from mindserve._transport.jobs import decode_reply as _decode_reply
    from mindserve._transport.jobs import stacked_reply as _stacked_reply
    from mindserve._workers.columns import Column
    from mindserve._workers.job_io import reply_block

    error = ServingError(FAILED, "instance 1 failed")
    writer, header = reply_block("m", 3, {"y": Column([YS]), "n": Column([NS])}, [None, error, None])
    data = reply_bytes(writer, header)
    assert header["err"] == [[1, FAILED, "instance 1 failed"]]
    assert _stacked_reply(memoryview(data), 3, ["y", "n"]) is None
    rows = expected_rows(YS, NS)
    assert decoded(_decode_reply(memoryview(data), 3, ["y", "n"])) == [rows[0], (FAILED, "instance 1 failed"), rows[2]]


def test_a_reply_failing_every_instance_is_not_stacked():
    from mindserve._errors import SYSTEM_ERROR
    from mindserve._transport.jobs import decode_reply as _decode_reply
    from mindserve._transport.jobs import stacked_reply as _stacked_reply

    header = {"n": 2, "err": [[0, SYSTEM_ERROR, "bad"], [1, SYSTEM_ERROR, "bad"]], "out": {}}
    data = reply_bytes(BlockWriter(), header)
    assert _stacked_reply(memoryview(data), 2, ["y"]) is None
    assert decoded(_decode_reply(memoryview(data), 2, ["y"])) == [(SYSTEM_ERROR, "bad")] * 2


def test_stacked_columns_with_errors_listed_are_not_read_as_stacked():
    # a header that lists errors yet describes stacked outputs of a row per instance (enough bytes for a stacked
    # read of all of them) is the general reader's to judge: it reads a row per successful instance
    from mindserve._transport.jobs import decode_reply as _decode_reply
    from mindserve._transport.jobs import stacked_reply as _stacked_reply

    writer = BlockWriter()
    header = {"n": 2, "err": [[0, 1, "x"]], "out": {"y": blocks.stacked_descriptor(writer, [YS[:2]], (2, 2), F32)}}
    data = reply_bytes(writer, header)
    assert _stacked_reply(memoryview(data), 2, ["y"]) is None
    assert decoded(_decode_reply(memoryview(data), 2, ["y"])) == [(1, "x"), {"y": (F32, (2, 2), YS[0].tobytes())}]


def test_a_reply_of_values_per_instance_is_not_stacked():
    from mindserve._transport.jobs import decode_reply as _decode_reply
    from mindserve._transport.jobs import stacked_reply as _stacked_reply

    writer = BlockWriter()
    header = {
        "n": 2,
        "err": [],
        "out": {"y": ["e", [blocks.value_descriptor(writer, "ab"), blocks.value_descriptor(writer, YS[0])]]},
    }
    data = reply_bytes(writer, header)
    assert _stacked_reply(memoryview(data), 2, ["y"]) is None
    assert decoded(_decode_reply(memoryview(data), 2, ["y"])) == [
        {"y": (_dtypes.MS_STRING, (), b"ab")},
        {"y": (F32, (2, 2), YS[0].tobytes())},
    ]


def test_a_stacked_reply_that_does_not_match_its_job():
    from mindserve._transport.jobs import decode_reply as _decode_reply
    from mindserve._transport.jobs import stacked_reply as _stacked_reply

    data = stacked_reply(YS, NS)
    for count in (2, 4):
        assert _stacked_reply(memoryview(data), count, ["y", "n"]) is None
        assert block_error(_decode_reply, memoryview(data), count, ["y", "n"]) == "reply header does not match its job"
    assert _stacked_reply(memoryview(data), 3, ["y", "z"]) is None
    assert block_error(_decode_reply, memoryview(data), 3, ["y", "z"]) == "reply without output z"


def test_runs_of_one_error_travel_as_one_entry_and_come_back_per_instance():
    from mindserve._errors import FAILED, INVALID_INPUTS, ServingError
    from mindserve._transport.jobs import decode_reply as _decode_reply
    from mindserve._transport.jobs import error_entries
    from mindserve._workers.columns import Column
    from mindserve._workers.job_io import reply_block

    a, b = ServingError(FAILED, "a"), ServingError(INVALID_INPUTS, "b")
    errors = [None, a, ServingError(FAILED, "a"), a, None, b, a, a]
    assert error_entries(errors) == [[1, FAILED, "a", 3], [5, INVALID_INPUTS, "b"], [6, FAILED, "a", 7]]
    assert error_entries([a] * 10000) == [[0, FAILED, "a", 9999]]
    assert error_entries([None, None]) == []
    ys = np.arange(16, dtype=np.float32).reshape(8, 2)
    writer, header = reply_block("m", 8, {"y": Column([ys])}, errors)
    results = _decode_reply(memoryview(reply_bytes(writer, header)), 8, ["y"])
    assert [(r.code, r.message) if isinstance(r, ServingError) else bytes(r["y"].data) for r in results] == [
        ys[0].tobytes(),
        (FAILED, "a"),
        (FAILED, "a"),
        (FAILED, "a"),
        ys[4].tobytes(),
        (INVALID_INPUTS, "b"),
        (FAILED, "a"),
        (FAILED, "a"),
    ]


@pytest.mark.parametrize(
    "entry",
    [
        [0, 1, "x", 2],  # a run past the job's instances
        [1, 1, "x", 0],  # a run that ends before it starts
        [0, 1, "x", True],  # not an index
        [0, "1", "x"],  # a code that is not an int
        [0, 1, 7],  # a message that is not text
        [0, 1, "x", 1, 1],  # too long
    ],
)
def test_bad_error_entries_are_refused(entry):
    from mindserve._transport.jobs import decode_reply as _decode_reply

    data = reply_bytes(BlockWriter(), {"n": 2, "err": [entry], "out": {}})
    with pytest.raises(BlockError, match="bad error entry in reply"):
        _decode_reply(memoryview(data), 2, ["y"])
