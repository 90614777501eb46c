"""The wire-level reader of common Predict requests (native/predict_wire.c through ms_wire): it must agree
with protobuf on every request it takes, and leave everything else (anything protobuf would read differently,
refuse, or that is not uniform) to the protobuf path by returning None. Plus ms_gather_at's bounds."""

import random

import numpy as np
import pytest

from mindserve import _dtypes
from mindserve._frontends.grpc import ms_wire
from mindserve._frontends.grpc.wire_write import varint
from mindserve._native import ffi, lib
from mindserve._proto import ms_service_pb2 as pb
from mindserve._tensor import StackedInputs
from mindserve._transport.blocks import PREFIX, BlockWriter, align


def _request(instances: list[dict], name="add", method="add_common", version=0) -> bytes:
    request = pb.PredictRequest()
    request.servable_spec.name = name
    request.servable_spec.method_name = method
    request.servable_spec.version_number = version
    for values in instances:
        instance = request.instances.add()
        for key, array in values.items():
            tensor = instance.items[key]
            tensor.dtype = _dtypes.CODE_OF[array.dtype]
            tensor.shape.dims.extend(array.shape)
            tensor.data = array.tobytes()
    return request.SerializeToString()


def _read(data: bytes, names=("x1", "x2")):
    head = ms_wire.read_head(data)
    if head is None:
        return None
    return ms_wire.CommonReader().read(data, head, tuple(names))


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    tag = varint(number << 3 | wire_type)
    return tag + (varint(len(payload)) + payload if wire_type == 2 else payload)


def _tensor(dtype=11, dims=(2,), data=b"\0" * 8, packed=True, extra=b"") -> bytes:
    if packed:
        shape = _field(1, 2, b"".join(varint(d) for d in dims)) if dims else b""
    else:
        shape = b"".join(_field(1, 0, varint(d)) for d in dims)
    return _field(1, 2, shape) + _field(2, 0, varint(dtype)) + _field(3, 2, data) + extra


def _instance(items: dict) -> bytes:
    return b"".join(_field(1, 2, _field(1, 2, k.encode()) + _field(2, 2, v)) for k, v in items.items())


def _wire(instances: list[bytes], spec=None) -> bytes:
    spec = _field(1, 2, b"add") + _field(2, 2, b"add_common") if spec is None else spec
    return _field(1, 2, spec) + b"".join(_field(2, 2, i) for i in instances)


ONE_INPUT = {"x1": _tensor(), "x2": _tensor()}


def _as_protobuf(data: bytes, names=("x1", "x2")) -> list[dict]:
    request = pb.PredictRequest.FromString(data)
    return [
        {n: (inst.items[n].dtype, tuple(inst.items[n].shape.dims), inst.items[n].data) for n in names}
        for inst in request.instances
    ]


def _as_read(instances: StackedInputs) -> list[dict]:
    return [{n: (t.dtype, t.shape, bytes(t.data)) for n, t in inst.items()} for inst in instances]


# ---------------------------------------------------------------------------------------------- common requests


def test_head_names_the_servable_and_counts_instances():
    data = _request([{"x1": np.ones(2, np.float32), "x2": np.ones(2, np.float32)}] * 3, version=7)
    head = ms_wire.read_head(data)
    assert head is not None
    assert (head.name, head.method, head.version, head.instances) == ("add", "add_common", 7, 3)
    assert pb.ServableSpec.FromString(head.spec) == pb.PredictRequest.FromString(data).servable_spec


def test_common_request_reads_exactly_what_protobuf_reads():
    rng = np.random.default_rng(1)
    instances = [
        {"x1": rng.standard_normal((2, 3)).astype(np.float32), "x2": rng.integers(-9, 9, 4).astype(np.int64)}
        for _ in range(5)
    ]
    data = _request(instances)
    read = _read(data)
    assert isinstance(read, StackedInputs) and len(read) == 5
    assert _as_read(read) == _as_protobuf(data)
    assert read.inputs["x1"].row_shape == (2, 3) and read.inputs["x1"].row_size == 24
    assert read.inputs["x2"].dtype == _dtypes.MS_INT64


@pytest.mark.parametrize(
    "dtype",
    [
        np.bool_,
        np.int8,
        np.uint8,
        np.int16,
        np.uint16,
        np.int32,
        np.uint32,
        np.int64,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
    ],
)
def test_every_numeric_dtype_is_common(dtype):
    data = _request([{"x1": np.zeros((3,), dtype), "x2": np.ones((1, 1), dtype)}] * 2)
    assert _as_read(_read(data)) == _as_protobuf(data)


def test_scalar_tensors_and_unpacked_dims_and_any_item_order():
    scalar = _tensor(dims=(), data=b"\1\0\0\0")
    unpacked = _tensor(dims=(1, 2), data=b"\0" * 8, packed=False)
    data = _wire([_instance({"x2": unpacked, "x1": scalar}), _instance({"x1": scalar, "x2": unpacked})])
    assert _as_read(_read(data)) == _as_protobuf(data)


def test_fields_in_any_order_within_a_tensor():
    tensor = _field(3, 2, b"\0" * 8) + _field(2, 0, varint(11)) + _field(1, 2, _field(1, 2, varint(2)))
    data = _wire([_instance({"x1": tensor, "x2": tensor})])
    assert _as_read(_read(data)) == _as_protobuf(data)


def test_random_requests_agree_with_protobuf():
    rng = np.random.default_rng(7)
    codes = list(_dtypes.NUMPY_OF.values())
    for _ in range(200):
        shapes = {n: tuple(int(d) for d in rng.integers(1, 4, rng.integers(0, 4))) for n in ("x1", "x2")}
        dtypes = {n: codes[rng.integers(len(codes))] for n in shapes}
        instances = [
            {n: rng.integers(0, 2, shapes[n]).astype(dtypes[n]) for n in shapes} for _ in range(int(rng.integers(1, 6)))
        ]
        data = _request(instances, version=int(rng.integers(0, 3)))
        assert _as_read(_read(data)) == _as_protobuf(data)


def test_part_keeps_its_instances():
    data = _request([{"x1": np.full(2, i, np.float32), "x2": np.full(2, -i, np.float32)} for i in range(6)])
    part = _read(data).part(2, 5)
    assert len(part) == 3 and _as_read(part) == _as_protobuf(data)[2:5]


# ------------------------------------------------------------------------------------------ not common: None

NOT_COMMON = {
    "unknown top-level field": _wire([_instance(ONE_INPUT)]) + _field(9, 2, b"x"),
    "spec twice": _wire([_instance(ONE_INPUT)]) + _field(1, 2, _field(1, 2, b"add")),
    "unknown spec field": _wire([_instance(ONE_INPUT)], spec=_field(1, 2, b"add") + _field(4, 0, b"\1")),
    "version as length-delimited": _wire([_instance(ONE_INPUT)], spec=_field(3, 2, b"\1")),
    "name twice": _wire([_instance(ONE_INPUT)], spec=_field(1, 2, b"add") + _field(1, 2, b"add")),
    "name not UTF-8": _wire([_instance(ONE_INPUT)], spec=_field(1, 2, b"\xff")),
    "no instances": _wire([]),
    "missing input": _wire([_instance({"x1": _tensor()})]),
    "extra input": _wire([_instance(dict(ONE_INPUT, x3=_tensor()))]),
    "duplicate key": _wire([_instance(ONE_INPUT) + _instance({"x1": _tensor()})]),
    "output_buffers": _wire([_instance(ONE_INPUT) + _field(2, 2, b"")]),
    "string tensor": _wire([_instance({"x1": _tensor(dtype=13, dims=(1,), data=b"ab"), "x2": _tensor()})]),
    "unknown dtype": _wire([_instance({"x1": _tensor(dtype=0), "x2": _tensor()})]),
    "dtype past the table": _wire([_instance({"x1": _tensor(dtype=99), "x2": _tensor()})]),
    "data too short": _wire([_instance({"x1": _tensor(data=b"\0" * 7), "x2": _tensor()})]),
    "data too long": _wire([_instance({"x1": _tensor(data=b"\0" * 9), "x2": _tensor()})]),
    "empty data": _wire([_instance({"x1": _tensor(dims=(0,), data=b""), "x2": _tensor()})]),
    "negative dim": _wire([_instance({"x1": _tensor(dims=(2**64 - 2,)), "x2": _tensor()})]),
    "dims overflowing": _wire([_instance({"x1": _tensor(dims=(2**62, 2**62, 4)), "x2": _tensor()})]),
    "nine dims": _wire([_instance({"x1": _tensor(dims=(1,) * 9, data=b"\0" * 4), "x2": _tensor()})]),
    "bytes_val": _wire([_instance({"x1": _tensor(extra=_field(4, 2, b"a")), "x2": _tensor()})]),
    "shm_data": _wire([_instance({"x1": _tensor(extra=_field(5, 2, b"")), "x2": _tensor()})]),
    "dtype twice": _wire([_instance({"x1": _tensor(extra=_field(2, 0, varint(11))), "x2": _tensor()})]),
    "shape twice": _wire([_instance({"x1": _tensor(extra=_field(1, 2, b"")), "x2": _tensor()})]),
    "shapes differ across instances": _wire(
        [_instance(ONE_INPUT), _instance({"x1": _tensor(dims=(1, 2)), "x2": _tensor()})]
    ),
    "dtypes differ across instances": _wire(
        [_instance(ONE_INPUT), _instance({"x1": _tensor(dtype=6), "x2": _tensor()})]
    ),
    "key missing in an entry": _wire([_instance(ONE_INPUT) + _field(1, 2, _field(2, 2, _tensor()))]),
    "value missing in an entry": _wire([_instance({"x1": _tensor()}) + _field(1, 2, _field(1, 2, b"x2"))]),
    "fixed64 wire type": _wire([_instance(ONE_INPUT)]) + b"\x11" + b"\0" * 8,
    "length past the end": _wire([_instance(ONE_INPUT)])[:-3],
    "varint too long": _wire(
        [
            _instance(
                {
                    "x1": _field(1, 2, _field(1, 2, b"\x02"))
                    + _field(2, 0, b"\x8b" + b"\x80" * 9 + b"\x00")
                    + _field(3, 2, b"\0" * 8),
                    "x2": _tensor(),
                }
            )
        ]
    ),
    "varint past 64 bits": _wire(
        [_instance({"x1": _tensor(dims=(2,)), "x2": _tensor()})], spec=_field(3, 0, b"\xff" * 9 + b"\x02")
    ),
    "field number 0": _wire([_instance(ONE_INPUT)]) + b"\x02\x00",
}


def test_the_request_the_uncommon_cases_start_from_is_common():
    assert _as_read(_read(_wire([_instance(ONE_INPUT)]))) == _as_protobuf(_wire([_instance(ONE_INPUT)]))
    same_dtype_with_ten_byte_varint = (
        _field(1, 2, _field(1, 2, b"\x02")) + _field(2, 0, b"\x8b" + b"\x80" * 8 + b"\x00") + _field(3, 2, b"\0" * 8)
    )
    data = _wire([_instance({"x1": same_dtype_with_ten_byte_varint, "x2": _tensor()})])
    assert _as_read(_read(data)) == _as_protobuf(data)


@pytest.mark.parametrize("case", sorted(NOT_COMMON))
def test_anything_uncommon_goes_the_protobuf_way(case):
    assert _read(NOT_COMMON[case]) is None


def test_wrong_input_names_are_not_common():
    assert _read(_wire([_instance(ONE_INPUT)]), names=("x1", "y")) is None
    assert _read(_wire([_instance(ONE_INPUT)]), names=("x1",)) is None


def test_mutated_requests_never_crash_and_agree_with_protobuf_when_taken():
    rng = random.Random(3)
    base = bytearray(_request([{"x1": np.arange(4, dtype=np.float32), "x2": np.ones((2, 2), np.int32)}] * 3))
    taken = 0
    for _ in range(3000):
        mutated = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        data = bytes(mutated)
        read = _read(data)
        if read is not None:
            taken += 1
            assert _as_read(read) == _as_protobuf(data)
    assert taken > 0  # mutations inside the tensor data keep a request common


# ---------------------------------------------------------------------------------------------- ms_gather_at


def _gather_at(dst: np.ndarray, src: bytes, offsets: list, row_size: int) -> int:
    offs = np.array(offsets, np.uint64)
    return lib.ms_gather_at(
        ffi.from_buffer(dst, require_writable=True),
        dst.nbytes,
        ffi.from_buffer(src),
        len(src),
        ffi.from_buffer("uint64_t[]", offs),
        len(offsets),
        row_size,
    )


def test_gather_at_copies_rows_in_order():
    dst = np.zeros(6, np.uint8)
    assert _gather_at(dst, b"abcdefgh", [6, 0, 3], 2) == 0
    assert dst.tobytes() == b"ghabde"


@pytest.mark.parametrize("offsets, row_size, dst_size", [([7], 2, 2), ([2**64 - 1], 2, 2), ([0, 0], 2, 3), ([0], 9, 9)])
def test_gather_at_refuses_rows_outside_either_buffer(offsets, row_size, dst_size):
    dst = np.full(dst_size, 0xAB, np.uint8)
    assert _gather_at(dst, b"abcdefgh", offsets, row_size) == -1
    assert (dst == 0xAB).all()


def test_block_writer_places_gathered_rows_as_a_stacked_column():
    data = _request([{"x1": np.full(2, i, np.float32), "x2": np.full(2, i, np.float32)} for i in range(3)])
    instances = _read(data)
    writer = BlockWriter()
    col = instances.inputs["x1"]
    at = writer.add_gathered(col.source, col.offsets, col.row_size)
    head, size = writer.encode({})
    buffer = bytearray(size)
    writer.write(memoryview(buffer), 0, head)
    start = align(PREFIX.size + len(head)) + at
    assert np.frombuffer(bytes(buffer[start : start + 24]), np.float32).tolist() == [0, 0, 1, 1, 2, 2]


# ---------------------------------------------------------------------------------------------- instance counts


def test_instances_are_counted_past_fields_the_reader_does_not_know():
    spec = _field(1, 2, b"add") + _field(2, 2, b"add_common")
    unknown = _field(7, 0, varint(300)) + _field(8, 1, bytes(8)) + _field(9, 5, bytes(4)) + _field(10, 2, b"xyz")
    data = unknown + _wire([_instance(ONE_INPUT), b"", _instance({"x1": _tensor(dtype=13)})], spec) + unknown
    assert ms_wire.count_instances(data) == (3, spec)
    assert len(pb.PredictRequest.FromString(data).instances) == 3


def test_the_count_of_a_request_without_spec_or_instances():
    assert ms_wire.count_instances(b"") == (0, b"")
    assert ms_wire.count_instances(_field(2, 2, b"") * 5) == (5, b"")


@pytest.mark.parametrize(
    "data",
    [
        _field(1, 2, b"add")[:-1],  # a length past the end
        _field(7, 1, bytes(7)),  # a fixed64 cut short
        _field(7, 5, bytes(3)),  # a fixed32 cut short
        varint(7 << 3 | 3) + varint(7 << 3 | 4),  # a group
        b"\x80",  # a tag cut short
        varint(0 << 3 | 2) + b"\0",  # field number 0
    ],
)
def test_wire_data_that_cannot_be_stepped_over_is_not_counted(data):
    assert ms_wire.count_instances(data) is None


def test_mutated_requests_are_counted_as_protobuf_counts_them():
    rng = random.Random(5)
    base = bytearray(_request([{"x1": np.arange(4, dtype=np.float32)}] * 4))
    for _ in range(2000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        counted = ms_wire.count_instances(bytes(data))
        try:
            parsed = pb.PredictRequest.FromString(bytes(data))
        except Exception:
            continue
        if counted is not None:  # protobuf may take groups the counter leaves to it
            assert counted[0] == len(parsed.instances)
