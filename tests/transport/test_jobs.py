"""The message format (mindserve._transport.jobs): the fast readers and the general ones agree on every header,
well-formed or hostile; the fast one either reads a message exactly as the general one does or leaves it."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mindserve import _dtypes
from mindserve._tensor import RawTensor, StackedInput, StackedInputs
from mindserve._transport import blocks, jobs

PROFILE = settings(
    max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
F32 = _dtypes.MS_FLOAT32


def _block(writer: blocks.BlockWriter, head: bytes, size: int) -> memoryview:
    buf = bytearray(size)
    writer.write(memoryview(buf), 0, head)
    return memoryview(bytes(buf))


def _general_job(block: memoryview):
    """(method, count, {input: (dtype, row shape)}) as the general reader sees a job of stacked columns, or the
    BlockError text."""
    try:
        reader = blocks.BlockReader(block, 0, len(block))
        checked = jobs.job_header(reader.header)
        if checked is None:
            return "bad job header"
        method, count, inputs = checked
        kinds = {}
        for name, desc in inputs.items():
            column = reader.column(desc, count)
            if isinstance(column, list):
                return "not stacked"
            kinds[name] = (column[0], column[1])
        return method, count, kinds
    except blocks.BlockError as exc:
        return str(exc)


def _fast_job(block: memoryview):
    found = blocks.block_header(block, 0, len(block))
    if found is None:
        return None
    kind = jobs.job_kind(*found)
    if kind is None or kind.needed > len(block):
        return None
    return kind.method, kind.instances, {n: (c.code, c.row_shape) for n, c in kind.inputs.items()}


def test_a_stacked_job_is_read_alike_by_both_readers():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    source = x.tobytes()
    instances = StackedInputs(3, {"x": StackedInput(F32, (4,), 16, source, np.arange(3, dtype=np.uint64) * 16)})
    writer = blocks.BlockWriter()
    block = _block(writer, *jobs.encode_job(writer, "m", instances))
    assert _fast_job(block) == _general_job(block) == ("m", 3, {"x": (F32, (4,))})


def test_a_job_of_values_is_left_to_the_general_reader():
    instances = [{"x": RawTensor(_dtypes.MS_STRING, (), b"ab")}, {"x": RawTensor(_dtypes.MS_STRING, (), b"c")}]
    writer = blocks.BlockWriter()
    block = _block(writer, *jobs.encode_job(writer, "m", instances))
    assert _fast_job(block) is None and _general_job(block) == "not stacked"


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.floats(allow_nan=False), st.text(max_size=3)),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=2), inner, max_size=3)),
    max_leaves=12,
)
DESCS = st.one_of(
    st.tuples(
        st.just("s"),
        st.sampled_from([F32, 1, 8, 13, 99, True, 11.0]),
        st.lists(st.integers(-1, 4), max_size=3),
        st.integers(-64, 256),
    ).map(list),
    JSON,
)


@PROFILE
@given(
    method=st.one_of(st.text(max_size=3), JSON),
    count=st.one_of(st.integers(-1, 5), JSON),
    inputs=st.one_of(st.dictionaries(st.sampled_from(["x", "y"]), DESCS, max_size=2), JSON),
    data=st.integers(0, 256),
)
def test_the_fast_job_reader_agrees_with_the_general_one(method, count, inputs, data):
    head = json.dumps({"m": method, "n": count, "in": inputs}).encode()
    start = blocks.align(blocks.PREFIX.size + len(head))
    block = memoryview(blocks.PREFIX.pack(len(head), 0) + head + bytes(start - blocks.PREFIX.size - len(head) + data))
    fast = _fast_job(block)
    if fast is not None:  # whatever the fast reader takes, the general one reads the same way
        assert fast == _general_job(block)


@PROFILE
@given(count=st.integers(1, 4), err=st.one_of(st.just([]), JSON), rows=st.integers(0, 4), extra=st.integers(0, 64))
def test_the_stacked_reply_reader_agrees_with_the_general_one(count, err, rows, extra):
    ys = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    writer = blocks.BlockWriter()
    header = {"n": count, "err": err, "out": {"y": blocks.stacked_descriptor(writer, [ys], (2,), F32)}}
    head, size = writer.encode(header)
    block = bytearray(size + extra)
    writer.write(memoryview(block), 0, head)
    data = memoryview(bytes(block))
    stacked = jobs.stacked_reply(data, count, ["y"])
    try:
        general = jobs.instance_reply(data, count, ["y"])
    except blocks.BlockError:
        general = None
    if stacked is not None:
        assert general is not None and [{n: bytes(t.data) for n, t in r.items()} for r in stacked] == [
            {n: bytes(t.data) for n, t in r.items()} for r in general
        ]
