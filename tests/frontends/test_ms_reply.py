"""The hand-written PredictReply encoder against protobuf's own message classes: whatever the encoder writes
must parse into exactly the reply that protobuf would build field by field."""

import numpy as np
import pytest

from mindserve import _dtypes
from mindserve._errors import ServingError
from mindserve._frontends.grpc.ms_reply import ReplyEncoder
from mindserve._frontends.grpc.wire_write import varint
from mindserve._proto import ms_service_pb2 as pb
from mindserve._tensor import RawTensor


def _spec(name="add", method="add_common", version=0) -> pb.ServableSpec:
    return pb.ServableSpec(name=name, method_name=method, version_number=version)


def _expected(spec: pb.ServableSpec, outcomes: list) -> pb.PredictReply:
    """The reply built with protobuf's API, by the rules of MSService."""
    reply = pb.PredictReply()
    reply.servable_spec.CopyFrom(spec)
    errors = [o for o in outcomes if isinstance(o, ServingError)]
    if errors and len(errors) == len(outcomes) and len({(e.code, e.message) for e in errors}) == 1:
        reply.error_msg.add(error_code=errors[0].code, error_msg=errors[0].message.encode())
        return reply
    for outcome in outcomes:
        instance = reply.instances.add()
        if errors:
            entry = reply.error_msg.add()
            if isinstance(outcome, ServingError):
                entry.error_code, entry.error_msg = outcome.code, outcome.message.encode()
                continue
        for name, raw in outcome.items():
            tensor = instance.items[name]
            tensor.dtype = raw.dtype
            if raw.dtype in (_dtypes.MS_STRING, _dtypes.MS_BYTES):
                tensor.shape.dims.append(1)
                tensor.bytes_val.append(bytes(raw.data))
            else:
                tensor.shape.dims.extend(raw.shape)
                tensor.data = bytes(raw.data)
    return reply


def _raw(array: np.ndarray) -> RawTensor:
    code = _dtypes.code_of_array(array)
    assert code is not None, array.dtype
    return RawTensor(code, array.shape, memoryview(array.tobytes()))


def _check(spec: pb.ServableSpec, outcomes: list) -> pb.PredictReply:
    data = ReplyEncoder().encode(spec.SerializeToString(), outcomes)
    got = pb.PredictReply.FromString(data)
    assert got == _expected(spec, outcomes)
    return got


@pytest.mark.parametrize(
    "value",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array(7, np.int64),
        np.zeros((0, 4), np.float64),
        np.array([True, False]),
        np.arange(300, dtype=np.uint16).reshape(3, 100),
        np.ones((1, 1, 1, 200), np.int8),
    ],
)
def test_numeric_outputs(value):
    got = _check(_spec(), [{"y": _raw(value)}, {"y": _raw(value)}])
    row = got.instances[1].items["y"]
    assert list(row.shape.dims) == list(value.shape) and row.data == value.tobytes()


def test_text_outputs_and_several_names():
    outcomes = [
        {
            "s": RawTensor(_dtypes.MS_STRING, (), memoryview("héllo".encode())),
            "b": RawTensor(_dtypes.MS_BYTES, (), memoryview(b"\x00\xff" * 100)),
            "y": _raw(np.array([1.5], np.float16)),
        }
    ]
    got = _check(_spec(version=3), outcomes)
    assert got.instances[0].items["s"].bytes_val == ["héllo".encode()]


def test_empty_text_output():
    _check(_spec(), [{"b": RawTensor(_dtypes.MS_BYTES, (), memoryview(b""))}])


def test_per_instance_errors_keep_their_places():
    outcomes = [
        {"y": _raw(np.ones(2, np.float32))},
        ServingError(2, "bad input"),
        {"y": _raw(np.zeros(2, np.float32))},
        ServingError(3, "other"),
    ]
    got = _check(_spec(), outcomes)
    assert [e.error_code for e in got.error_msg] == [0, 2, 0, 3]
    assert len(got.instances[1].items) == 0


def test_same_error_everywhere_is_one_entry():
    got = _check(_spec(), [ServingError(5, "servable is not available")] * 3)
    assert len(got.instances) == 0 and got.error_msg[0].error_msg == b"servable is not available"


def test_whole_request_error_and_empty_spec():
    data = ReplyEncoder().whole_request_error(
        b"", ServingError(1, "Serving Error: enqueued requests count exceeds the limit 1")
    )
    got = pb.PredictReply.FromString(data)
    assert not got.HasField("servable_spec") and got.error_msg[0].error_code == 1


def test_large_lengths_take_multi_byte_varints():
    value = np.arange(40000, dtype=np.float32)  # 160000 bytes: a three-byte length
    _check(_spec(), [{"y": _raw(value)}])
    assert varint(0) == b"\x00" and varint(127) == b"\x7f" and varint(128) == b"\x80\x01" and varint(300) == b"\xac\x02"


def test_stacked_results_encode_as_their_instances():
    """A request whose outputs came back stacked is written in one pass; it must read as the same reply as its
    instances one by one."""
    from mindserve._tensor import StackedOutput, StackedResults

    y = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    z = np.arange(4, dtype=np.int64)
    results = StackedResults(
        4,
        {
            "y": StackedOutput(_dtypes.MS_FLOAT32, (2, 3), memoryview(y.tobytes())),
            "z": StackedOutput(_dtypes.MS_INT64, (), memoryview(z.tobytes())),
        },
    )
    assert results[2]["y"].data.tobytes() == y[2].tobytes() and results[-1]["z"].shape == ()
    data = ReplyEncoder().encode(_spec().SerializeToString(), results)
    assert pb.PredictReply.FromString(data) == _expected(_spec(), list(results))
    with pytest.raises(IndexError):
        results[4]
