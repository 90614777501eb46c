"""The dispatcher in process, over in-memory worker groups (the WorkerGroup protocol), with no worker process:
routing by servable, method and version, the documented error texts, readiness and change notices, the bound
on waiting requests, and what it notes for metrics."""

from __future__ import annotations

import asyncio

import pytest

from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._errors import InvalidInput, NoLiveWorker, NotServed, QueueFull, StageFailed
from mindserve._metrics import requests as request_metrics
from mindserve._tensor import InstanceResults, RawTensor
from support.fake_groups import ADD, ECHO, FakeGroup, dispatcher_of

X = {"x1": RawTensor(11, (2,), b"\0" * 8), "x2": RawTensor(11, (2,), b"\0" * 8)}


def test_version_0_runs_on_the_newest_version_with_a_live_worker():
    old, new = FakeGroup("add", 1), FakeGroup("add", 2)
    dispatcher = dispatcher_of(old, new)
    assert dispatcher.resolve("add", "add", 0).served_version == 2
    new.up = False
    assert dispatcher.resolve("add", "add", 0).served_version == 1
    assert dispatcher.resolve("add", "add", 1).served_version == 1
    old.up = False
    new.restarting = True  # none alive: the newest whose worker is coming back
    assert dispatcher.resolve("add", "add", 0).served_version == 2


def test_a_version_asked_for_by_number_runs_there_or_nowhere():
    dispatcher = dispatcher_of(FakeGroup("add", 1), FakeGroup("add", 2, up=False))
    with pytest.raises(NoLiveWorker) as dead:
        dispatcher.resolve("add", "add", 2)
    assert dead.value.message == "Request servable(add) method(add) version(2) , servable is not available"
    with pytest.raises(NotServed) as missing:
        dispatcher.resolve("add", "add", 3)
    assert missing.value.message == (
        "Request servable(add) method(add) version(3) , servable is not available: the served versions of add are 1, 2"
    )


def test_unknown_servables_and_methods_get_mindspore_texts_with_what_is_served():
    dispatcher = dispatcher_of(FakeGroup("add", 1), FakeGroup("echo", 1, {"echo": ECHO}))
    with pytest.raises(NotServed) as servable:
        dispatcher.resolve("ad", "add", 0)
    assert servable.value.message == (
        "Request servable(ad) method(add) , servable is not available: servable 'ad' is not served; served: add, echo"
    )
    with pytest.raises(NotServed) as method:
        dispatcher.resolve("add", "sub", 0)
    assert method.value.message == (
        "Request servable(add) method(sub) , method is not available: servable add has methods add"
    )
    with pytest.raises(NotServed) as nothing:
        Dispatcher().resolve("add", "add", 0)
    assert nothing.value.message == (
        "Request servable(add) method(add) , servable is not available: servable "
        "'add' is not served; no servable is served"
    )


def test_run_answers_one_result_per_instance_from_the_group():
    group = FakeGroup("add", 1)
    dispatcher = dispatcher_of(group)

    async def scenario():
        return await dispatcher.run(dispatcher.resolve("add", "add", 0), [X, X, X])

    results = asyncio.run(scenario())
    assert isinstance(results, InstanceResults) and list(results) == [X, X, X]
    assert group.calls == [("add", 3, 0)]
    assert dispatcher.enqueued_requests == 0 and dispatcher.pending() == {("add", 1): 0}


def test_waiting_requests_are_bounded_and_the_one_over_is_refused_at_once():
    group = FakeGroup("add", 1)
    group.hold = True
    dispatcher = dispatcher_of(group)
    dispatcher.max_enqueued_requests = 2

    async def scenario():
        route = dispatcher.resolve("add", "add", 0)
        held = [asyncio.create_task(dispatcher.run(route, [X])) for _ in range(2)]
        await asyncio.sleep(0)
        assert dispatcher.pending() == {("add", 1): 2}
        with pytest.raises(QueueFull) as full:
            await dispatcher.run(route, [X])
        assert full.value.message == "Serving Error: enqueued requests count exceeds the limit 2"
        group.release.set()
        assert [list(r) for r in await asyncio.gather(*held)] == [[X], [X]]
        assert dispatcher.enqueued_requests == 0

    asyncio.run(scenario())


def test_a_cancelled_request_leaves_no_count_behind():
    group = FakeGroup("add", 1)
    group.hold = True
    dispatcher = dispatcher_of(group)

    async def scenario():
        task = asyncio.create_task(dispatcher.run(dispatcher.resolve("add", "add", 0), [X]))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert dispatcher.enqueued_requests == 0 and dispatcher.pending() == {("add", 1): 0}

    asyncio.run(scenario())


def test_readiness_follows_the_groups_and_changes_are_announced():
    first, second = FakeGroup("add", 1), FakeGroup("echo", 1, {"echo": ECHO})
    dispatcher = Dispatcher()
    assert dispatcher.ready()  # nothing started: vacuously ready
    changes: list[int] = []
    dispatcher.subscribe(lambda: changes.append(len(dispatcher.not_ready())))
    dispatcher.add(first)
    dispatcher.add(second)
    assert changes == [0, 0] and dispatcher.ready()
    second.die()
    assert changes == [0, 0, 1] and not dispatcher.ready()
    assert [(v.name, v.version, v.ready) for v in dispatcher.not_ready()] == [("echo", 1, False)]
    assert [tuple(s) for s in dispatcher.worker_states()] == [("add", 1, 0, True, 0), ("echo", 1, 0, False, 0)]


def test_open_inference_model_names_resolve_to_a_method():
    dispatcher = dispatcher_of(FakeGroup("add", 1, {"add": ADD, "sub": ADD}), FakeGroup("echo", 1, {"echo": ECHO}))
    assert dispatcher.find_method("echo") == ("echo", "echo")
    assert dispatcher.find_method("add.sub") == ("add", "sub")
    with pytest.raises(NotServed) as two:
        dispatcher.find_method("add")
    assert two.value.message == (
        "Model 'add' is not found: servable add has 2 methods, name one as 'add.<method>' (add, sub)"
    )
    with pytest.raises(NotServed) as none:
        dispatcher.find_method("add.mul")
    assert none.value.message == (
        "Model 'add.mul' is not found, models are named 'servable.method', or "
        "'servable' for a servable with a single method: servable add has methods add, sub"
    )
    with pytest.raises(NotServed) as elsewhere:
        dispatcher.find_method("sub.add")
    assert elsewhere.value.message == (
        "Model 'sub.add' is not found, models are named 'servable.method', or "
        "'servable' for a servable with a single method"
    )


def test_too_many_instances_are_refused_before_anything_is_made():
    dispatcher = dispatcher_of(FakeGroup("add", 1))
    dispatcher.max_request_instances = 3
    dispatcher.check_instance_count(3, "add", "add")
    with pytest.raises(InvalidInput) as refused:
        dispatcher.check_instance_count(4, "add", "add")
    assert refused.value.message == "Instances count 4 of request exceeds the limit 3, servable: add, method: add"


def test_what_the_dispatcher_notes_for_metrics():
    failing = FakeGroup("add", 1, answer=lambda instance: StageFailed("Call Function 'add.cast' Failed"))
    dispatcher = dispatcher_of(failing)

    async def one(servable: str) -> None:
        with dispatcher.requests.tallied(request_metrics.MS):
            try:
                await dispatcher.run(dispatcher.resolve(servable, "add", 0), [X])
            except NotServed:
                pass

    async def scenario():
        await one("add")
        await one("nosuch")

    asyncio.run(scenario())
    series = dispatcher.requests.series
    assert series[("add", "1", "add", "ms")].failures == {"stage_failed": 1}
    # a servable that is not served: no client text becomes a label
    assert set(series) == {("add", "1", "add", "ms"), ("unknown", "unknown", "unknown", "ms")}
