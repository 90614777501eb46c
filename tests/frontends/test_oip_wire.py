"""The in-place reader of ModelInferRequest and the direct writer of ModelInferResponse (oip_wire), against
protobuf's own parser and serializer: what the reader reports of a common request is what protobuf reads,
anything it cannot vouch for is left to protobuf, and the writer's bytes are protobuf's."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mindserve._frontends.grpc.oip_wire import InferReader, encode_response
from mindserve._frontends.grpc.wire_write import varint
from mindserve._frontends.oip.tensors import OutputTensor
from support.messages import grpc_inference as oip


def request(**fields) -> oip.ModelInferRequest:
    r = oip.ModelInferRequest(
        model_name=fields.pop("model_name", "add"),
        id=fields.pop("id", ""),
        model_version=fields.pop("model_version", ""),
    )
    for name, datatype, shape, data in fields.pop("inputs", [("x1", "FP32", [2, 2], bytes(16))]):
        r.inputs.add(name=name, datatype=datatype, shape=shape)
        r.raw_input_contents.append(data)
    for name in fields.pop("outputs", []):
        r.outputs.add(name=name)
    assert not fields
    return r


def read(message_or_bytes):
    data = message_or_bytes if isinstance(message_or_bytes, bytes) else message_or_bytes.SerializeToString()
    return InferReader().read(data)


def as_protobuf_reads(call) -> dict:
    return {
        "model_name": call.model_name,
        "model_version": call.model_version,
        "id": call.id,
        "inputs": [(t.name, t.datatype, list(t.shape), bytes(t.data)) for t in call.inputs()],
        "outputs": [name for name, parameters in call.outputs],
    }


def protobuf_reads(data: bytes) -> dict:
    r = oip.ModelInferRequest.FromString(data)
    return {
        "model_name": r.model_name,
        "model_version": r.model_version,
        "id": r.id,
        "inputs": [(t.name, t.datatype, list(t.shape), raw) for t, raw in zip(r.inputs, r.raw_input_contents)],
        "outputs": [o.name for o in r.outputs],
    }


def test_a_common_request_reads_as_protobuf_reads_it():
    data = request(
        model_name="add_common",
        model_version="2",
        id="req-7",
        inputs=[
            ("x1", "FP32", [2, 2], np.arange(4, dtype=np.float32).tobytes()),
            ("x2", "INT64", [2, 3, 1], np.arange(6, dtype=np.int64).tobytes()),
            ("s", "BYTES", [1], b"\x02\x00\x00\x00hi"),
        ],
        outputs=["y", "z"],
    ).SerializeToString()
    call = read(data)
    assert as_protobuf_reads(call) == protobuf_reads(data)
    assert all(isinstance(t.data, memoryview) and t.data.obj is data for t in call.inputs())  # no copy


def test_raw_contents_may_come_before_their_inputs_and_shapes_unpacked():
    # raw_input_contents (7) first, then the input (5) with its shape (3) as two unpacked varints
    tensor = b"\x0a\x02x1" + b"\x12\x04FP32" + b"\x18\x01\x18\x04"
    data = b"\x0a\x03add" + b"\x3a\x10" + bytes(16) + b"\x2a" + varint(len(tensor)) + tensor
    assert (
        as_protobuf_reads(read(data))
        == protobuf_reads(data)
        == {
            "model_name": "add",
            "model_version": "",
            "id": "",
            "inputs": [("x1", "FP32", [1, 4], bytes(16))],
            "outputs": [],
        }
    )


def request_with_parameters():
    r = request()
    r.parameters["priority"].int64_param = 1
    return r


def input_with_parameters():
    r = request()
    r.inputs[0].parameters["binary_data_size"].int64_param = 16
    return r


def output_with_parameters():
    r = request(outputs=["y"])
    r.outputs[0].parameters["binary_data"].bool_param = True
    return r


def typed_contents():
    r = request()
    r.ClearField("raw_input_contents")
    r.inputs[0].contents.fp32_contents.extend([1, 2, 3, 4])
    return r


def more_raw_than_inputs():
    r = request()
    r.raw_input_contents.append(b"")
    return r


@pytest.mark.parametrize(
    "make",
    [
        request_with_parameters,
        input_with_parameters,
        output_with_parameters,
        typed_contents,
        more_raw_than_inputs,
        pytest.param(lambda: request(inputs=[]), id="no inputs"),
        pytest.param(lambda: request(inputs=[("x", "FP32", [1] * 9, bytes(4))]), id="nine dims"),
        pytest.param(lambda: request(inputs=[("x", "FP32", [-1, 4], bytes(16))]), id="negative dim"),
    ],
)
def test_what_is_not_common_is_left_to_protobuf(make):
    assert read(make()) is None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x0a\x03add\x0a\x03sub" + b"\x2a\x04\x0a\x02x1\x3a\x00", id="a repeated singular field"),
        pytest.param(b"\x0a\x03add\x42\x00" + b"\x2a\x04\x0a\x02x1\x3a\x00", id="an unknown field"),
        pytest.param(b"\x0a\x02\xff\xfe" + b"\x2a\x04\x0a\x02x1\x3a\x00", id="a name that is not UTF-8"),
        pytest.param(b"\x0a\x05add" + b"\x2a\x04\x0a\x02x1\x3a\x00", id="a length past the end"),
        pytest.param(b"\x0a\x03add" + b"\x2a\x04\x0a\x02x1\x3a", id="a truncated field"),
        pytest.param(b"\x08\x01", id="a wrong wire type"),
    ],
)
def test_malformed_or_unusual_bytes_are_left_to_protobuf(data):
    assert read(data) is None


names = st.text(st.characters(codec="utf-8"), max_size=6)
tensors = st.tuples(
    names,
    st.sampled_from(["FP32", "INT8", "BYTES", "", "FP99"]),
    st.lists(st.integers(0, 2**40), max_size=9),
    st.binary(max_size=24),
)


@settings(
    max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    model_name=names,
    model_version=names,
    id=names,
    inputs=st.lists(tensors, max_size=4),
    outputs=st.lists(names, max_size=3),
)
def test_any_request_protobuf_writes_reads_alike_or_is_left_to_protobuf(model_name, model_version, id, inputs, outputs):
    data = request(
        model_name=model_name, model_version=model_version, id=id, inputs=inputs, outputs=outputs
    ).SerializeToString()
    call = read(data)
    if inputs and all(len(shape) <= 8 for _, _, shape, _ in inputs):
        assert as_protobuf_reads(call) == protobuf_reads(data)
    else:
        assert call is None


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=64))
def test_any_bytes_are_read_as_protobuf_reads_them_or_left_to_it(data):
    call = read(data)
    if call is not None:
        assert as_protobuf_reads(call) == protobuf_reads(data)


def expected_response(model_name, version, request_id, outputs) -> bytes:
    reply = oip.ModelInferResponse(model_name=model_name, model_version=version, id=request_id)
    for out in outputs:
        reply.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        reply.raw_output_contents.append(
            bytes(out.data) if out.items is None else b"".join(len(i).to_bytes(4, "little") + i for i in out.items)
        )
    return reply.SerializeToString()


@pytest.mark.parametrize("request_id", ["", "req-1"])
def test_the_response_is_the_bytes_protobuf_writes(request_id):
    outputs = [
        OutputTensor("y", "FP32", [2, 2], memoryview(np.arange(4, dtype=np.float32).tobytes()), None),
        OutputTensor("text", "BYTES", [2], None, [b"ab", b""]),
        OutputTensor("empty", "INT32", [0, 3], b"", None),
        OutputTensor("big", "UINT8", [300], bytes(range(256)) + bytes(44), None),
    ]
    data = encode_response("add.add_common", "1", request_id, outputs)
    assert data == expected_response("add.add_common", "1", request_id, outputs)
    parsed = oip.ModelInferResponse.FromString(data)
    assert [list(o.shape) for o in parsed.outputs] == [[2, 2], [2], [0, 3], [300]]
    assert parsed.raw_output_contents[1] == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"
