"""Client value round trips through the echo servable (a Python stage that returns its input), over TCP and a
unix socket, sync and async; client-side input and constructor errors; unreachable servers."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from mindserve.client import Client
from support.processes import ServerProcess, free_port, start_server

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

NUMERIC_DTYPES = [
    np.bool_,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
]
SHAPES = [(1,), (3,), (2, 3), (2, 1, 4), (1, 1, 1, 5)]
EMPTY_SHAPES = [(0,), (0, 3), (3, 0, 2)]

UNAVAILABLE = "Grpc Error, (14, 'unavailable')"


@pytest.fixture(scope="module")
def unix_echo_server(servable_dir, tmp_path_factory) -> Iterator[ServerProcess]:
    """The echo servable served on a unix socket only."""
    tmp = tmp_path_factory.mktemp("echo_unix")
    address = f"unix:{tmp}/x.sock"
    server = start_server(
        tmp,
        f"""
        server.start_servables(server.ServableStartConfig({servable_dir!r}, "echo", device_ids=0))
        server.start_grpc_server({address!r})
    """,
        address,
    )
    yield server
    server.stop()


@pytest.fixture(params=["tcp", "unix"])
def address(request):
    if request.param == "tcp":
        return request.getfixturevalue("echo_server").address
    return request.getfixturevalue("unix_echo_server").address


@pytest.fixture(params=["sync", "async"])
def call(request):
    """infer, or infer_async(...).result()."""
    if request.param == "sync":
        return lambda client, instances: client.infer(instances)
    return lambda client, instances: client.infer_async(instances).result(timeout=60)


def sample(dtype, shape) -> np.ndarray:
    """Deterministic values that use the dtype's range (negative numbers, large magnitudes, fractions)."""
    size = int(np.prod(shape))
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        flat = np.arange(size) % 3 == 1
    elif dtype.kind == "i":
        info = np.iinfo(dtype)
        pool = np.array([info.min, -1, 0, 1, info.max, 7], dtype)
        flat = pool[np.arange(size) % len(pool)]
    elif dtype.kind == "u":
        info = np.iinfo(dtype)
        pool = np.array([0, 1, info.max, 200, info.max - 1], dtype)
        flat = pool[np.arange(size) % len(pool)]
    else:
        pool = np.array([-1.5, 0.0, 0.25, 3.0, -1024.0, 65504.0 if dtype == np.float16 else 1e30], dtype)
        flat = pool[np.arange(size) % len(pool)]
    return flat.astype(dtype).reshape(shape)


def assert_same_array(got, expected: np.ndarray) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert got.tobytes() == np.ascontiguousarray(expected).tobytes()


def wait_until_serving(client: Client, timeout: float = 60) -> None:
    """Wait until the echo method answers again (a worker that died is being restarted), so that one failure
    does not spill into the following tests."""
    deadline = time.monotonic() + timeout
    while True:
        result = client.infer({"x": np.ones(1, np.int8)})
        if isinstance(result, list) and "y" in result[0]:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"echo did not answer again: {result}")
        time.sleep(0.2)


def echo(address: str, call, value):
    result = call(Client(address, "echo", "echo"), [{"x": value}])
    assert isinstance(result, list), result
    assert len(result) == 1
    assert list(result[0]) == ["y"], result
    return result[0]["y"]


# --- numeric arrays ---------------------------------------------------------------------------------------------


def assert_echoes(client, call, arrays) -> None:
    """Send one instance per array to the echo method; each comes back exactly, in order."""
    result = call(client, [{"x": a} for a in arrays])
    assert isinstance(result, list), result
    assert len(result) == len(arrays)
    for got, expected in zip(result, arrays):
        assert list(got) == ["y"]
        assert_same_array(got["y"], expected)


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_dtype_round_trips_in_several_shapes(address, call, dtype):
    client = Client(address, "echo", "echo")
    arrays = [sample(dtype, shape) for shape in SHAPES]
    # every shape in one request: the instances keep their order and their own dtype/shape
    assert_echoes(client, call, arrays)


def test_0d_arrays_of_every_dtype_keep_shape(address, call):
    client = Client(address, "echo", "echo")
    arrays = [sample(dtype, ()) for dtype in NUMERIC_DTYPES]
    assert_echoes(client, call, arrays)


def test_arrays_with_empty_dims_round_trip(address, call):
    client = Client(address, "echo", "echo")
    arrays: list[np.ndarray] = [np.zeros(shape, dtype) for dtype, shape in zip(NUMERIC_DTYPES, EMPTY_SHAPES * 4)]
    try:
        assert_echoes(client, call, arrays)
    finally:
        wait_until_serving(client)


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64, np.uint64], ids=lambda d: np.dtype(d).name)
def test_non_contiguous_arrays_round_trip(address, call, dtype):
    base = np.arange(24).astype(dtype).reshape(4, 6)
    transposed = base.T
    assert not transposed.flags["C_CONTIGUOUS"]
    strided = base[::2, 1::2]
    assert not strided.flags["C_CONTIGUOUS"]
    for view in (transposed, strided):
        got = echo(address, call, view)
        assert_same_array(got, view)
    np.testing.assert_array_equal(echo(address, call, transposed)[0], [0, 6, 12, 18])


def test_big_endian_array_comes_back_in_native_order(echo_server):
    value = np.arange(6, dtype=">i4").reshape(2, 3)
    got = echo(echo_server.address, lambda c, i: c.infer(i), value)
    assert got.dtype == np.dtype("<i4")
    assert got.shape == (2, 3)
    np.testing.assert_array_equal(got, [[0, 1, 2], [3, 4, 5]])


def test_float_special_values_round_trip(echo_server):
    value = np.array([np.nan, np.inf, -np.inf, -0.0, 5e-324], np.float64)
    got = echo(echo_server.address, lambda c, i: c.infer(i), value)
    assert got.dtype == np.float64
    assert got.tobytes() == value.tobytes()


# --- scalars ----------------------------------------------------------------------------------------------------

NUMPY_SCALARS = [
    (np.float32(1.5), np.float32, 1.5),
    (np.int8(-3), np.int8, -3),
    (np.bool_(True), np.bool_, True),
    (np.uint16(65535), np.uint16, 65535),
    (np.float64(-2.25), np.float64, -2.25),
    (np.int64(-(2**63)), np.int64, -(2**63)),
    (np.float16(0.5), np.float16, 0.5),
]


def test_numpy_scalars_become_0d_arrays(address, call):
    client = Client(address, "echo", "echo")
    result = call(client, [{"x": value} for value, _, _ in NUMPY_SCALARS])
    assert isinstance(result, list), result
    assert len(result) == len(NUMPY_SCALARS)
    for got, (value, dtype, expected) in zip(result, NUMPY_SCALARS):
        y = got["y"]
        assert isinstance(y, np.ndarray)
        assert (y.dtype, y.shape) == (np.dtype(dtype), ()), (value, y)
        assert y.item() == expected


@pytest.mark.parametrize(
    "value, dtype",
    [
        (True, np.bool_),
        (False, np.bool_),
        (0, np.int64),
        (-7, np.int64),
        (2**63 - 1, np.int64),
        (-(2**63), np.int64),
        (1.5, np.float64),
        (-0.1, np.float64),
        (1e300, np.float64),
    ],
    ids=repr,
)
def test_python_scalars_become_one_element_arrays(address, call, value, dtype):
    got = echo(address, call, value)
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.dtype(dtype)
    assert got.shape == (1,)
    assert got[0] == value
    assert type(got[0].item()) is type(value)


def test_python_int_out_of_int64_range_is_refused(echo_server):
    client = Client(echo_server.address, "echo", "echo")
    with pytest.raises(RuntimeError) as info:
        client.infer({"x": 2**63})
    assert str(info.value) == f"The value {2**63} of input 'x' is out of the int64 range"


# --- str and bytes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["abc", "", "héllo wörld — 你好 🙂", "a\x00b", "line\nbreak " * 1000],
    ids=["ascii", "empty", "non-ascii", "nul", "long"],
)
def test_str_round_trips_as_str(address, call, value):
    got = echo(address, call, value)
    assert type(got) is str
    assert got == value


@pytest.mark.parametrize(
    "value",
    [b"abc", b"", b"\x00\x01\x00\xff\xfe\x00", bytes(range(256)) * 40, "é".encode("latin-1")],
    ids=["ascii", "empty", "zeros", "all-bytes", "not-utf8"],
)
def test_bytes_round_trip_as_bytes(address, call, value):
    got = echo(address, call, value)
    assert type(got) is bytes
    assert got == value


def test_two_inputs_of_different_kinds(address, call):
    """echo2 returns its inputs without a stage: str with an array, bytes with a float16 array."""
    client = Client(address, "echo", "echo2")
    array = sample(np.uint32, (2, 5))
    halves = np.array([0.5, -2.0], np.float16)
    result = call(client, [{"x1": "text ✓", "x2": array}, {"x1": halves, "x2": b"\x00raw"}])
    assert isinstance(result, list), result
    assert len(result) == 2
    assert sorted(result[0]) == ["x1", "x2"]
    assert result[0]["x1"] == "text ✓" and type(result[0]["x1"]) is str
    assert_same_array(result[0]["x2"], array)
    assert_same_array(result[1]["x1"], halves)
    assert result[1]["x2"] == b"\x00raw" and type(result[1]["x2"]) is bytes


# --- instances ----------------------------------------------------------------------------------------------------


def test_one_dict_is_one_instance(address, call):
    client = Client(address, "echo", "echo")
    value = np.array([[1, 2], [3, 4]], np.int32)
    result = call(client, {"x": value})
    assert isinstance(result, list)
    assert len(result) == 1
    assert list(result[0]) == ["y"]
    assert_same_array(result[0]["y"], value)


def test_many_instances_keep_their_order(address, call):
    client = Client(address, "echo", "echo")
    values: list[np.ndarray | str | bytes] = [np.full((i % 4 + 1,), i, np.int64) for i in range(40)]
    values[7] = "seven"
    values[21] = b"twenty-one"
    result = call(client, [{"x": v} for v in values])
    assert isinstance(result, list)
    assert len(result) == 40
    for got, expected in zip(result, values):
        assert list(got) == ["y"]
        if isinstance(expected, np.ndarray):
            assert_same_array(got["y"], expected)
        else:
            assert type(got["y"]) is type(expected) and got["y"] == expected


def test_tuple_of_instances_is_accepted(echo_server):
    client = Client(echo_server.address, "echo", "echo")
    result = client.infer(({"x": 1}, {"x": "two"}))
    assert len(result) == 2
    assert_same_array(result[0]["y"], np.array([1], np.int64))
    assert result[1]["y"] == "two"


# --- client-side input errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "instances, message",
    [
        ([1], "instance should be a map"),
        (["x"], "instance should be a map"),
        ([{"x": 1}, [("x", 1)]], "instance should be a map"),
        (5, "instance should be a map"),
        (
            {"x": ("a", "b")},
            "The list of input 'x' is not a tensor of numbers or bools (numpy makes it <U1); send str "
            "and bytes values one per input",
        ),
        ({"x": None}, "Not support value type <class 'NoneType'> of input 'x'"),
        ({"x": {"a": 1}}, "Not support value type <class 'dict'> of input 'x'"),
        ({"x": 1 + 2j}, "Not support value type <class 'complex'> of input 'x'"),
        ({"x": np.array(["abc"])}, "Unknown data type <U3 of input 'x': send numbers, bools, str or bytes"),
        ({"x": np.array([b"ab"])}, "Unknown data type |S2 of input 'x': send numbers, bools, str or bytes"),
        (
            {"x": np.array([1, "a"], dtype=object)},
            "Unknown data type object of input 'x': send numbers, bools, str or bytes",
        ),
        (
            {"x": np.array([1 + 1j], np.complex64)},
            "Unknown data type complex64 of input 'x': send numbers, bools, str or bytes",
        ),
        ({1: np.ones(2)}, "instance key should be str, but actually <class 'int'>"),
    ],
    ids=[
        "int",
        "str",
        "second-list",
        "bare-int",
        "str-tuple",
        "none",
        "dict",
        "complex",
        "unicode-array",
        "bytes-array",
        "object-array",
        "complex-array",
        "int-key",
    ],
)
def test_input_errors_raise_before_sending(echo_server, instances, message):
    # (one instance: nothing else could be sent, so the client raises; see test_first_hour for several)
    assert str(np.array(["abc"]).dtype) == "<U3"
    client = Client(echo_server.address, "echo", "echo")
    with pytest.raises(RuntimeError) as info:
        client.infer(instances)
    assert str(info.value) == message
    with pytest.raises(RuntimeError) as info:
        client.infer_async(instances)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "args, message",
    [
        ((1, "echo", "echo"), "Parameter 'address' should be str, but actually <class 'int'>"),
        (("", "echo", "echo"), "Parameter 'address' should not be empty str"),
        (("127.0.0.1:1", "", "echo"), "Parameter 'servable_name' should not be empty str"),
        (("127.0.0.1:1", None, "echo"), "Parameter 'servable_name' should be str, but actually <class 'NoneType'>"),
        (("127.0.0.1:1", "echo", ""), "Parameter 'method_name' should not be empty str"),
        (("127.0.0.1:1", "echo", b"echo"), "Parameter 'method_name' should be str, but actually <class 'bytes'>"),
        (("127.0.0.1:1", "echo", "echo", -1), "Parameter 'version_number' should be >= 0"),
        (
            ("127.0.0.1:1", "echo", "echo", 1.0),
            "Parameter 'version_number' should be int, but actually <class 'float'>",
        ),
        (
            ("127.0.0.1:1", "echo", "echo", True),
            "Parameter 'version_number' should be int, but actually <class 'bool'>",
        ),
        (("127.0.0.1:1", "echo", "echo", 0, "tls"), "The type of ssl_config should be type of SSLConfig"),
    ],
    ids=[
        "address-int",
        "address-empty",
        "servable-empty",
        "servable-none",
        "method-empty",
        "method-bytes",
        "version-negative",
        "version-float",
        "version-bool",
        "ssl-str",
    ],
)
def test_client_constructor_checks(args, message):
    with pytest.raises(RuntimeError) as info:
        Client(*args)
    assert str(info.value) == message


# --- unreachable servers -------------------------------------------------------------------------------------------


def test_unreachable_servers_give_unavailable(tmp_path):
    addresses = [f"127.0.0.1:{free_port()}", f"unix:{tmp_path}/nobody-here.sock"]
    for address in addresses:
        client = Client(address, "echo", "echo")
        for result in (
            client.infer([{"x": np.ones(2, np.float32)}]),
            client.infer_async([{"x": np.ones(2, np.float32)}]).result(timeout=60),
            client.infer({"x": "text"}),
        ):
            assert isinstance(result, dict), result
            assert list(result) == ["error"]
            assert result["error"].startswith(UNAVAILABLE + ", "), result
            assert len(result["error"]) > len(UNAVAILABLE) + 2


# ------------------------------------------------- lists and Python scalars typed from the method's metadata


@pytest.mark.parametrize(
    "value, wanted, expected",
    [
        ([1, 2], np.float32, np.float32),  # integers to a float input
        ([1.5, 2.0], np.float32, np.float32),  # floats to a narrower float
        ([1, 2], np.int32, np.int32),  # integers that fit
        ([1, 300], np.uint8, np.int64),  # 300 does not fit uint8: left as numpy types it
        ([-1], np.uint32, np.int64),  # nor does -1
        ([1.5], np.int32, np.float64),  # a float never becomes an integer
        ([True, False], np.float32, np.bool_),  # bools stay bools
        ([1, 2], None, np.int64),  # nothing known: numpy's type
        (3, np.float32, np.float32),  # a Python scalar too (a 1-element array)
        (2.5, np.int64, np.float64),
    ],
)
def test_lists_and_scalars_take_the_data_type_the_method_takes_when_no_value_changes(value, wanted, expected):
    from mindserve._proto import ms_service_pb2 as pb
    from mindserve.client._convert import fill_tensor, value_of

    tensor = pb.Tensor()
    fill_tensor(tensor, "x", value, np.dtype(wanted) if wanted is not None else None)
    decoded = value_of(tensor)
    assert decoded.dtype == np.dtype(expected)
    assert decoded.tolist() == (list(value) if isinstance(value, list) else [value])
