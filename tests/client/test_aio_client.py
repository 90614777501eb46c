"""The asyncio client (mindserve.client.aio) against a real server: the sync Client's values, results and errors,
from coroutines, many calls in flight on one channel, deadlines and cancellation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mindserve.client.aio import Client

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

ONES = np.ones((2, 2), np.float32)


def run(coroutine):
    return asyncio.run(coroutine)


def test_infer_answers_one_dict_per_instance(add_server):
    async def scenario():
        async with Client(add_server.address, "add", "add_common") as client:
            return await client.infer([{"x1": ONES, "x2": ONES * k} for k in range(3)])

    results = run(scenario())
    assert [r["y"].tolist() for r in results] == [
        [[1.0, 1.0], [1.0, 1.0]],
        [[2.0, 2.0], [2.0, 2.0]],
        [[3.0, 3.0], [3.0, 3.0]],
    ]


def test_many_calls_in_flight_on_one_client_and_a_unix_socket(add_server):
    async def scenario():
        async with Client(add_server.unix_address, "add", "add_common") as client:
            return await asyncio.gather(*(client.infer({"x1": ONES * k, "x2": ONES}) for k in range(32)))

    results = run(scenario())
    assert [r[0]["y"][0][0] for r in results] == [k + 1.0 for k in range(32)]


def test_lists_take_the_type_the_method_takes(add_server):
    async def scenario():
        async with Client(add_server.address, "add", "add_common") as client:
            types = await client.input_types()
            return types, await client.infer({"x1": [[1, 2], [3, 4]], "x2": [[1, 1], [1, 1]]})

    types, result = run(scenario())
    assert types == {"x1": np.dtype(np.float32), "x2": np.dtype(np.float32)}
    assert result[0]["y"].dtype == np.float32 and result[0]["y"].tolist() == [[2.0, 3.0], [4.0, 5.0]]


def test_errors_are_the_sync_clients(add_server):
    async def scenario():
        async with Client(add_server.address, "add", "add_common") as client:
            mixed = await client.infer([{"x1": ONES, "x2": ONES}, {"x1": ONES}])
        async with Client(add_server.address, "nope", "add_common") as missing:
            unknown = await missing.infer({"x1": ONES, "x2": ONES})
        async with Client("127.0.0.1:1", "add", "add_common", timeout=5) as nowhere:
            unreachable = await nowhere.infer({"x1": ONES, "x2": ONES})
        return mixed, unknown, unreachable

    mixed, unknown, unreachable = run(scenario())
    assert mixed[0]["y"].tolist() == [[2.0, 2.0], [2.0, 2.0]]
    assert mixed[1] == {
        "error": "Cannot find input x2 in instance input , servable add, method add_common: the method "
        "takes x1, x2; the instance gives x1"
    }
    assert unknown["error"].startswith("Request servable(nope) method(add_common) , servable is not available")
    assert unreachable["error"].startswith("Grpc Error, (14, 'unavailable')")


def test_a_bad_value_is_the_callers_mistake_and_bad_arguments_are_refused(add_server):
    async def scenario():
        async with Client(add_server.address, "add", "add_common") as client:
            await client.infer({"x1": object(), "x2": ONES})

    with pytest.raises(RuntimeError, match="Not support value type <class 'object'> of input 'x1'"):
        run(scenario())
    with pytest.raises(RuntimeError, match="Parameter 'timeout' should be a positive number of seconds or None"):
        Client(add_server.address, "add", "add_common", timeout=-1)


def test_a_cancelled_coroutine_cancels_its_call_and_the_client_goes_on(add_server):
    async def scenario():
        async with Client(add_server.address, "add", "add_common") as client:
            task = asyncio.ensure_future(client.infer({"x1": ONES, "x2": ONES}))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return await client.infer({"x1": ONES, "x2": ONES})

    assert run(scenario())[0]["y"].tolist() == [[2.0, 2.0], [2.0, 2.0]]
