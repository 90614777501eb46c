"""The C core through cffi: gathering instance rows into a batch buffer and scattering them back, with every
size checked before anything is written; and stack_rows, the worker's Python face of the gather."""

import numpy as np
import pytest

from mindserve._native import ffi, lib
from mindserve._workers.batching import stack_rows

SIZE_MAX = 2 ** (8 * ffi.sizeof("size_t")) - 1
FILL = 0xAB


def _gather(dst: np.ndarray, row_size: int, rows: list, sizes=None, count=None) -> int:
    """Call ms_gather_rows on ``dst`` with ``rows`` (bytes objects or arrays); ``sizes`` and ``count`` default to
    the rows' own sizes and number."""
    rows = [np.frombuffer(r, np.uint8) if isinstance(r, bytes) else r for r in rows]
    keep = [ffi.from_buffer(r) for r in rows]
    srcs = ffi.new("void *[]", keep) if keep else ffi.NULL
    sizes = [r.nbytes for r in rows] if sizes is None else sizes
    size_array = ffi.new("size_t[]", sizes) if sizes else ffi.NULL
    return lib.ms_gather_rows(
        ffi.from_buffer(dst, require_writable=True),
        dst.nbytes,
        row_size,
        srcs,
        size_array,
        len(rows) if count is None else count,
    )


def _scatter(src: np.ndarray, row_size: int, dsts: list, sizes=None, count=None) -> int:
    keep = [ffi.from_buffer(d, require_writable=True) for d in dsts]
    dst_array = ffi.new("void *[]", keep) if keep else ffi.NULL
    sizes = [d.nbytes for d in dsts] if sizes is None else sizes
    size_array = ffi.new("size_t[]", sizes) if sizes else ffi.NULL
    return lib.ms_scatter_rows(
        ffi.from_buffer(src), src.nbytes, row_size, dst_array, size_array, len(dsts) if count is None else count
    )


def _filled(nbytes: int) -> np.ndarray:
    return np.full(nbytes, FILL, np.uint8)


# ---------------------------------------------------------------------------------------------------- gather


def test_gather_copies_rows_exactly_and_zeroes_padding():
    rows = [bytes(range(i * 8, i * 8 + 8)) for i in range(3)]
    dst = _filled(5 * 8)
    assert _gather(dst, 8, rows) == 0
    assert dst[:24].tobytes() == b"".join(rows)
    assert not dst[24:].any()


def test_gather_full_buffer_without_padding():
    rng = np.random.default_rng(7)
    rows = [rng.integers(0, 256, 12, dtype=np.uint8) for _ in range(4)]
    dst = _filled(48)
    assert _gather(dst, 12, rows) == 0
    np.testing.assert_array_equal(dst.reshape(4, 12), np.stack(rows))


def test_gather_zero_fills_a_tail_shorter_than_a_row():
    dst = _filled(2 * 4 + 3)
    assert _gather(dst, 4, [b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"]) == 0
    assert dst.tobytes() == bytes(range(1, 9)) + b"\0\0\0"


def test_gather_no_rows_zeroes_everything():
    dst = _filled(16)
    assert _gather(dst, 8, []) == 0
    assert not dst.any()


@pytest.mark.parametrize("bad_size", [7, 9, 12, 15])
def test_gather_source_of_wrong_size_fails_and_leaves_destination_untouched(bad_size):
    rows = [b"a" * 8, b"b" * 8, b"c" * 8]
    dst = _filled(32)
    assert _gather(dst, 8, rows, sizes=[8, bad_size, 8]) == -1
    assert (dst == FILL).all()


def test_gather_wrong_size_in_the_last_row_is_caught_before_the_first_is_copied():
    dst = _filled(24)
    assert _gather(dst, 8, [b"x" * 8, b"y" * 8, b"z" * 4]) == -1
    assert (dst == FILL).all()


def test_gather_more_rows_than_fit_fails():
    dst = _filled(16)
    assert _gather(dst, 8, [b"1" * 8, b"2" * 8, b"3" * 8]) == -1
    assert (dst == FILL).all()


@pytest.mark.parametrize(
    "row_size, count",
    [
        (2**63, 2),  # count * row_size wraps to 0
        (8, (SIZE_MAX // 8) + 2),  # wraps to 8: would "fit" an 8-byte buffer
        (SIZE_MAX, SIZE_MAX),  # wraps to 1
        (1 << 32, 1 << 32),  # wraps to 0 on 64 bits
    ],
)
def test_gather_count_times_row_size_overflow_fails(row_size, count):
    # only two sizes exist: the check must refuse before it reads sizes[count - 1] or any source (an 8-byte
    # buffer: the second size already overflows it, so the third, which does not exist, is never read;
    # AddressSanitizer caught a 16-byte one reading past the array)
    dst = _filled(8)
    sizes = ffi.new("size_t[]", [row_size, row_size])
    srcs = ffi.new("void *[]", [ffi.NULL, ffi.NULL])
    assert (
        lib.ms_gather_rows(ffi.from_buffer(dst, require_writable=True), dst.nbytes, row_size, srcs, sizes, count) == -1
    )
    assert (dst == FILL).all()


def test_gather_row_size_zero():
    dst = _filled(8)
    assert _gather(dst, 0, [b"", b"", b""]) == 0
    assert not dst.any()  # no rows to copy: all of it is padding
    dst = _filled(8)
    assert _gather(dst, 0, [b"", b"x"]) == -1  # a non-empty source is not a 0-byte row
    assert (dst == FILL).all()


def test_gather_into_empty_buffer():
    dst = np.empty(0, np.uint8)
    assert _gather(dst, 4, []) == 0
    assert _gather(dst, 4, [b"abcd"]) == -1


# ---------------------------------------------------------------------------------------------------- scatter


def test_scatter_copies_rows_and_ignores_padding():
    src = np.arange(5 * 6, dtype=np.uint8)
    dsts = [_filled(6) for _ in range(3)]
    assert _scatter(src, 6, dsts) == 0
    for i, d in enumerate(dsts):
        np.testing.assert_array_equal(d, src[i * 6 : (i + 1) * 6])


def test_scatter_destination_of_wrong_size_fails_and_writes_nothing():
    src = np.arange(24, dtype=np.uint8)
    dsts = [_filled(8), _filled(8), _filled(8)]
    assert _scatter(src, 8, dsts, sizes=[8, 8, 7]) == -1
    assert all((d == FILL).all() for d in dsts)


def test_scatter_reading_past_the_source_fails():
    src = np.arange(16, dtype=np.uint8)
    dsts = [_filled(8) for _ in range(3)]
    assert _scatter(src, 8, dsts) == -1
    assert all((d == FILL).all() for d in dsts)


def test_scatter_count_times_row_size_overflow_fails():
    # an 8-byte source: the second size already reaches past it, so the third (which does not exist) is never read
    src = np.arange(8, dtype=np.uint8)
    sizes = ffi.new("size_t[]", [8, 8])
    dsts = ffi.new("void *[]", [ffi.NULL, ffi.NULL])
    assert lib.ms_scatter_rows(ffi.from_buffer(src), src.nbytes, 8, dsts, sizes, (SIZE_MAX // 8) + 2) == -1
    assert lib.ms_scatter_rows(ffi.from_buffer(src), src.nbytes, 2**63, dsts, sizes, 2) == -1


def test_gather_then_scatter_round_trip():
    rng = np.random.default_rng(3)
    rows = [rng.standard_normal((3, 5)).astype(np.float32) for _ in range(6)]
    batch = np.empty((8, 3, 5), np.float32)
    assert _gather(batch, 60, rows) == 0
    out = [np.empty((3, 5), np.float32) for _ in rows]
    assert _scatter(batch, 60, out) == 0
    for a, b in zip(rows, out):
        np.testing.assert_array_equal(a, b)
    assert not batch[6:].any()


# ---------------------------------------------------------------------------------------------------- stack_rows


@pytest.mark.parametrize(
    "dtype",
    [
        np.float32,
        np.float64,
        np.float16,
        np.int8,
        np.uint8,
        np.int16,
        np.uint16,
        np.int32,
        np.uint32,
        np.int64,
        np.uint64,
        np.bool_,
    ],
)
def test_stack_rows_dtypes_with_padding(dtype):
    rng = np.random.default_rng(11)
    rows = [(rng.integers(0, 100, (2, 3)) % (2 if dtype is np.bool_ else 100)).astype(dtype) for _ in range(3)]
    batch = stack_rows(rows, 5, (2, 3), np.dtype(dtype))
    assert batch.shape == (5, 2, 3)
    assert batch.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(batch[:3], np.stack(rows))
    np.testing.assert_array_equal(batch[3:], np.zeros((2, 2, 3), dtype))


def test_stack_rows_exact_float_bits():
    special = np.array([np.nan, -0.0, np.inf, -np.inf, np.finfo(np.float64).tiny, 1e308], np.float64)
    rows = [special, special[::-1].copy()]
    batch = stack_rows(rows, 2, (6,), np.dtype(np.float64))
    assert batch.tobytes() == special.tobytes() + special[::-1].tobytes()


def test_stack_rows_without_padding_and_scalar_rows():
    rows = [np.array(i, np.int64) for i in range(4)]
    batch = stack_rows(rows, 4, (), np.dtype(np.int64))
    np.testing.assert_array_equal(batch, np.arange(4))


def test_stack_rows_non_contiguous_rows():
    base = np.arange(24, dtype=np.int32).reshape(4, 6)
    rows = [base[:, ::2][:2], base.T[:3, :2].copy().T]  # a strided view and a Fortran-ordered copy
    batch = stack_rows(rows, 3, (2, 3), np.dtype(np.int32))
    np.testing.assert_array_equal(batch[0], base[:2, ::2])
    np.testing.assert_array_equal(batch[1], base.T[:3, :2].T)
    assert not batch[2].any()


def test_stack_rows_single_row_fast_path_is_a_view():
    row = np.array([[1.5, 2.5], [3.5, 4.5]], np.float32)
    batch = stack_rows([row], 1, (2, 2), np.dtype(np.float32))
    assert batch.shape == (1, 2, 2)
    np.testing.assert_array_equal(batch[0], row)
    assert np.shares_memory(batch, row)


def test_stack_rows_single_row_padded_to_a_fixed_batch():
    row = np.array([7, 8, 9], np.uint8)
    batch = stack_rows([row], 4, (3,), np.dtype(np.uint8))
    np.testing.assert_array_equal(batch, [[7, 8, 9], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert not np.shares_memory(batch, row)


def test_stack_rows_wrong_row_size_raises():
    rows: list[np.ndarray] = [np.zeros((2, 3), np.float32), np.zeros((2, 2), np.float32)]
    with pytest.raises(ValueError, match="instance tensors do not fit the batch buffer"):
        stack_rows(rows, 4, (2, 3), np.dtype(np.float32))
    rows = [np.zeros(3, np.float64), np.zeros(3, np.float32)]  # same count, other item size
    with pytest.raises(ValueError, match="instance tensors differ in data type from the batch"):
        stack_rows(rows, 2, (3,), np.dtype(np.float64))


def test_stack_rows_more_rows_than_the_batch_raises():
    rows = [np.ones(2, np.int16) for _ in range(3)]
    with pytest.raises(ValueError, match="instance tensors do not fit the batch buffer"):
        stack_rows(rows, 2, (2,), np.dtype(np.int16))


def test_stack_rows_empty_row_shape():
    rows = [np.zeros((0, 3), np.float32) for _ in range(2)]
    batch = stack_rows(rows, 3, (0, 3), np.dtype(np.float32))
    assert batch.shape == (3, 0, 3)


# ---------------------------------------------------------------------------------------------------- interleave


def _interleave_reference(head: bytes, count: int, prefixes: list, columns: list, row_sizes: list) -> bytes:
    """Record i is head, then for each part k its prefix and row i of column k (pure Python)."""
    return b"".join(
        head + b"".join(p + bytes(c[i * r : (i + 1) * r]) for p, c, r in zip(prefixes, columns, row_sizes))
        for i in range(count)
    )


def _interleave(
    dst: np.ndarray, head: bytes, count: int, prefixes: list, columns: list, row_sizes: list, dst_size=None
) -> int:
    """Call ms_interleave_rows on ``dst``; an empty head or prefix goes as NULL (its size is 0: never read)."""
    head_ptr = ffi.new("char[]", head) if head else ffi.NULL
    keep = [ffi.new("char[]", p) if p else ffi.NULL for p in prefixes]
    cols = [ffi.from_buffer(c) if len(c) else ffi.NULL for c in columns]
    parts = len(prefixes)
    return lib.ms_interleave_rows(
        ffi.from_buffer(dst, require_writable=True),
        dst.nbytes if dst_size is None else dst_size,
        head_ptr,
        len(head),
        count,
        parts,
        ffi.new("void *[]", keep) if parts else ffi.NULL,
        ffi.new("size_t[]", [len(p) for p in prefixes]) if parts else ffi.NULL,
        ffi.new("void *[]", cols) if parts else ffi.NULL,
        ffi.new("size_t[]", row_sizes) if parts else ffi.NULL,
        ffi.new("size_t[]", [len(c) for c in columns]) if parts else ffi.NULL,
    )


def _record(head: bytes, prefixes: list, row_sizes: list) -> int:
    return len(head) + sum(len(p) for p in prefixes) + sum(row_sizes)


@pytest.mark.parametrize("count", [0, 1, 2, 3, 7])
def test_interleave_one_part(count):
    rng = np.random.default_rng(count)
    head, prefix, row = b"\x1a\x0c", b"\x0a\x01y\x12\x07", 5
    column = rng.integers(0, 256, count * row, dtype=np.uint8).tobytes()
    expected = _interleave_reference(head, count, [prefix], [column], [row])
    assert len(expected) == count * _record(head, [prefix], [row])
    dst = _filled(len(expected) + 9)  # room to spare: what is past the records stays as it was
    assert _interleave(dst, head, count, [prefix], [column], [row]) == len(expected)
    assert dst[: len(expected)].tobytes() == expected
    assert (dst[len(expected) :] == FILL).all()


@pytest.mark.parametrize("count", [1, 2, 4, 9])
def test_interleave_two_parts_of_different_row_sizes(count):
    rng = np.random.default_rng(100 + count)
    head = b"\x1a\x99\x01"
    prefixes = [b"\x0a\x0b\x0a\x01y\x12\x06\x08\x0b\x12\x02\x08\x02", b"\x0a\x01n\x12"]
    rows = [8, 3]
    columns = [rng.integers(0, 256, count * r, dtype=np.uint8).tobytes() for r in rows]
    expected = _interleave_reference(head, count, prefixes, columns, rows)
    # every record is framed alike: the head and prefixes at the same place in each, row i of each column in it
    record = _record(head, prefixes, rows)
    for i in range(count):
        one = expected[i * record : (i + 1) * record]
        assert (
            one == head + prefixes[0] + columns[0][i * 8 : (i + 1) * 8] + prefixes[1] + columns[1][i * 3 : (i + 1) * 3]
        )
    dst = _filled(len(expected))  # exactly the size needed
    assert _interleave(dst, head, count, prefixes, columns, rows) == count * record
    assert dst.tobytes() == expected


def test_interleave_rows_from_numpy_columns():
    ys = np.arange(12, dtype="<f4").reshape(6, 2) * 1.5
    ns = np.arange(6, dtype="<i8") - 3
    prefixes = [b"P" * 7, b"Q" * 2]
    columns = [ys.tobytes(), ns.tobytes()]
    expected = _interleave_reference(b"H", 6, prefixes, columns, [8, 8])
    dst = _filled(len(expected))
    keep = [ffi.new("char[]", p) for p in prefixes]
    written = lib.ms_interleave_rows(
        ffi.from_buffer(dst, require_writable=True),
        dst.nbytes,
        b"H",
        1,
        6,
        2,
        ffi.new("void *[]", keep),
        ffi.new("size_t[]", [7, 2]),
        ffi.new("void *[]", [ffi.from_buffer(ys), ffi.from_buffer(ns)]),
        ffi.new("size_t[]", [8, 8]),
        ffi.new("size_t[]", [ys.nbytes, ns.nbytes]),
    )
    assert written == 6 * (1 + 7 + 8 + 2 + 8)
    assert dst.tobytes() == expected


@pytest.mark.parametrize("count", [1, 3])
def test_interleave_without_head(count):
    prefixes = [b"ab", b"c"]
    columns = [bytes(range(count * 4)), bytes(range(100, 100 + count * 2))]
    expected = _interleave_reference(b"", count, prefixes, columns, [4, 2])
    assert expected[:6] == b"ab" + bytes(range(4))
    dst = _filled(len(expected))
    assert _interleave(dst, b"", count, prefixes, columns, [4, 2]) == count * 9
    assert dst.tobytes() == expected


def test_interleave_zero_byte_rows_and_prefixes():
    # a 0-byte row (an output of shape [0]) or prefix is never read: its column and prefix may be NULL
    columns = [b"", bytes(range(6))]
    expected = _interleave_reference(b"h", 3, [b"p", b""], columns, [0, 2])
    assert expected == b"hp\x00\x01" + b"hp\x02\x03" + b"hp\x04\x05"
    dst = _filled(len(expected))
    assert _interleave(dst, b"h", 3, [b"p", b""], columns, [0, 2]) == 12
    assert dst.tobytes() == expected


def test_interleave_only_heads_and_empty_records():
    dst = _filled(10)
    assert _interleave(dst, b"xy", 5, [], [], []) == 10  # no parts: the head alone, count times
    assert dst.tobytes() == b"xy" * 5
    dst = _filled(4)
    assert _interleave(dst, b"", 1000, [b""], [b""], [0]) == 0  # 0-byte records: nothing to write, any count
    assert (dst == FILL).all()


@pytest.mark.parametrize("count", [1, 2, 5])
def test_interleave_one_byte_short_fails_and_leaves_destination_untouched(count):
    head, prefixes, rows = b"\x1a\x05", [b"\x0a\x01", b"\x12"], [3, 1]
    columns = [bytes(range(count * 3)), bytes(range(50, 50 + count))]
    record = _record(head, prefixes, rows)
    dst = _filled(count * record)
    assert _interleave(dst, head, count, prefixes, columns, rows, dst_size=count * record - 1) == -1
    assert (dst == FILL).all()
    short = _filled(count * record - 1)  # the same, with the buffer itself one byte short
    assert _interleave(short, head, count, prefixes, columns, rows) == -1
    assert (short == FILL).all()
    assert _interleave(dst, head, count, prefixes, columns, rows) == count * record  # the exact size fits
    assert dst.tobytes() == _interleave_reference(head, count, prefixes, columns, rows)


def test_interleave_into_empty_buffer():
    dst = np.empty(0, np.uint8)
    assert _interleave(dst, b"h", 0, [b"p"], [b""], [1]) == 0  # no records
    assert _interleave(dst, b"h", 1, [b"p"], [b"r"], [1]) == -1


@pytest.mark.parametrize(
    "prefix_sizes, row_sizes",
    [
        ([SIZE_MAX, 1], [1, 1]),  # a prefix of SIZE_MAX bytes: the record size wraps
        ([1, 1], [SIZE_MAX - 2, 1]),  # head + prefix + row wraps to 0
        ([2**63, 2**63], [0, 0]),  # two halves of 2^64
        ([0, 0], [2**63, 2**63 + 1]),  # wraps to 1
    ],
)
def test_interleave_record_size_overflow_fails(prefix_sizes, row_sizes):
    # the pointers are NULL: the check must refuse before it reads any prefix or column
    dst = _filled(64)
    nulls = ffi.new("void *[]", [ffi.NULL, ffi.NULL])
    assert (
        lib.ms_interleave_rows(
            ffi.from_buffer(dst, require_writable=True),
            dst.nbytes,
            b"h",
            1,
            1,
            2,
            nulls,
            ffi.new("size_t[]", prefix_sizes),
            nulls,
            ffi.new("size_t[]", row_sizes),
            ffi.new("size_t[]", [SIZE_MAX, SIZE_MAX]),
        )
        == lib.MS_EINVAL
    )
    assert (dst == FILL).all()


@pytest.mark.parametrize("count", [(SIZE_MAX // 8) + 2, 2**61 + 1, SIZE_MAX])
def test_interleave_count_times_record_overflow_fails(count):
    # record 8: count * 8 wraps to a small number that a 64-byte buffer would "fit"
    dst = _filled(64)
    nulls = ffi.new("void *[]", [ffi.NULL])
    assert (
        lib.ms_interleave_rows(
            ffi.from_buffer(dst, require_writable=True),
            dst.nbytes,
            b"hh",
            2,
            count,
            1,
            nulls,
            ffi.new("size_t[]", [0]),
            nulls,
            ffi.new("size_t[]", [6]),
            ffi.new("size_t[]", [SIZE_MAX]),
        )
        == lib.MS_EINVAL
    )
    assert (dst == FILL).all()


@pytest.mark.parametrize("short", [0, 1])
def test_interleave_refuses_a_column_short_of_rows(short):
    """A column that holds fewer than ``count`` rows is refused before anything is read or written."""
    ys = np.arange(6, dtype="<f8")
    dst = _filled(6 * (1 + 8))
    assert _interleave(dst, b"", 6, [b"P"], [ys.tobytes()[: ys.nbytes - 8 * (short + 1)]], [8]) == lib.MS_EINVAL
    assert (dst == FILL).all()
    assert _interleave(dst, b"", 6, [b"P"], [ys.tobytes()], [8]) == 6 * 9
