"""The master's plan of a method run as segments (num_parallel_workers), from a worker's report, and the values of
a request's instances as they move between segments (in process)."""

import numpy as np

from mindserve._errors import StageFailed
from mindserve._supervision.segments import MethodPlan, Segment, Values, plan_method
from mindserve._tensor import RawTensor, StackedInput, StackedInputs, StackedOutput, StackedResults

# steps(x): check = py(x); y = model(check); text, raw = py(y); z = py(y); outputs z, text, raw, x
STEPS = {
    "inputs": ["x"],
    "outputs": ["y", "text", "raw", "x"],
    "stages": [
        {"model": False, "args": [[0, 0]], "outputs": 1},
        {"model": True, "args": [[1, 0]], "outputs": 1},
        {"model": False, "args": [[2, 0]], "outputs": 2},
        {"model": False, "args": [[2, 0]], "outputs": 1},
    ],
    "output_refs": [[4, 0], [3, 0], [3, 1], [0, 0]],
}


def test_a_method_is_planned_as_runs_of_stages_of_one_kind():
    plan = plan_method("steps", STEPS)
    assert plan is not None and plan.has_model
    assert plan.segments == (
        Segment(1, 1, False, "steps#1-1", ("x",), ("1.0",)),
        Segment(2, 2, True, "steps#2-2", ("1.0",), ("2.0",)),
        Segment(3, 4, False, "steps#3-4", ("2.0",), ("3.0", "3.1", "4.0")),
    )
    assert plan.outputs == (("y", "4.0"), ("text", "3.0"), ("raw", "3.1"), ("x", "x"))


def test_a_value_used_later_is_handed_on_past_the_next_segment():
    # pre makes a and b; the model uses a; post uses the model's output and b
    report = {
        "inputs": ["x", "w"],
        "outputs": ["out"],
        "stages": [
            {"model": False, "args": [[0, 0]], "outputs": 2},
            {"model": True, "args": [[1, 0], [0, 1]], "outputs": 1},
            {"model": False, "args": [[2, 0], [1, 1]], "outputs": 1},
        ],
        "output_refs": [[3, 0]],
    }
    plan = plan_method("m", report)
    assert plan is not None
    assert [(s.needs, s.hands_on) for s in plan.segments] == [
        (("x",), ("1.0", "1.1")),
        (("w", "1.0"), ("2.0",)),
        (("1.1", "2.0"), ("3.0",)),
    ]


def test_python_stages_only_make_one_segment_without_a_model():
    report = {
        "inputs": ["x"],
        "outputs": ["y"],
        "stages": [{"model": False, "args": [[0, 0]], "outputs": 1}] * 2,
        "output_refs": [[2, 0]],
    }
    plan = plan_method("m", report)
    assert plan is not None and not plan.has_model and len(plan.segments) == 1


def test_a_report_without_a_plan_or_with_a_malformed_one_runs_whole():
    assert plan_method("m", {"inputs": ["x"], "outputs": ["y"]}) is None
    assert plan_method("m", {**STEPS, "output_refs": [[4, "0"], [3, 0], [3, 1], [0, 0]]}) is None
    assert plan_method("m", {**STEPS, "output_refs": [[4, 0]]}) is None
    assert plan_method("m", {**STEPS, "stages": ["model"]}) is None


def test_values_stay_stacked_while_every_instance_succeeds():
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    source = rows.tobytes()
    request = StackedInputs(3, {"x": StackedInput(11, (2,), 8, source, np.arange(3, dtype=np.uint64) * 8)})
    values = Values(request)
    first = values.instances(["x"], [0, 1, 2])
    assert isinstance(first, StackedInputs) and first.inputs["x"] is request.inputs["x"]
    doubled = (rows * 2).tobytes()
    values.take(["1.0"], [0, 1, 2], StackedResults(3, {"1.0": StackedOutput(11, (2,), doubled)}))
    second = values.instances(["1.0", "x"], [0, 1, 2])
    assert isinstance(second, StackedInputs)
    assert bytes(second[2]["1.0"].data) == (rows[2] * 2).tobytes() and bytes(second[1]["x"].data) == rows[1].tobytes()
    # an instance fails: the others go on one by one
    error = StageFailed("failed")
    values.take(["2.0"], [0, 1, 2], [{"2.0": RawTensor(11, (), b"a")}, error, {"2.0": RawTensor(11, (), b"c")}])
    third = values.instances(["2.0", "x"], [0, 2])
    assert [bytes(i["2.0"].data) for i in third] == [b"a", b"c"]
    assert [bytes(i["x"].data) for i in third] == [rows[0].tobytes(), rows[2].tobytes()]


class _Process:
    def __init__(self, alive: bool):
        self.alive = alive


def _plan(name: str, report: dict) -> MethodPlan:
    plan = plan_method(name, report)
    assert plan is not None, report
    return plan


def _group(plans: dict, device_alive: bool, python_alive: bool):
    from mindserve._supervision.servable_workers import ServableWorkers
    from mindserve._supervision.worker_process import WorkerSpec

    spec = WorkerSpec("servables", "s", 1, 0, None)
    group = ServableWorkers([spec], [WorkerSpec("servables", "s", 1, 0, None, python_worker=1)])
    # (stand-ins for WorkerProcess with the one attribute readiness reads: hence the ignore)
    group.workers, group.python_workers = [_Process(device_alive)], [_Process(python_alive)]  # type: ignore[list-item]
    group._plans = {name: _plan(name, report) for name, report in plans.items()}
    return group


def test_readiness_needs_a_device_worker_for_model_stages_and_any_worker_without_them():
    python_only = {
        "inputs": ["x"],
        "outputs": ["y"],
        "stages": [{"model": False, "args": [[0, 0]], "outputs": 1}],
        "output_refs": [[1, 0]],
    }
    # a Python-stage worker down: still ready while the device worker lives (it runs Python stages too)
    assert _group({"steps": STEPS}, device_alive=True, python_alive=False).ready
    # the device worker down: not ready for a servable with model stages, whatever runs its Python stages
    assert not _group({"steps": STEPS}, device_alive=False, python_alive=True).ready
    assert _group({"echo": python_only}, device_alive=False, python_alive=True).ready
    assert not _group({"echo": python_only}, device_alive=False, python_alive=False).ready


def test_outputs_that_came_back_whole_and_stacked_are_answered_whole():
    request = StackedInputs(2, {"x": StackedInput(11, (2,), 8, bytes(16), np.arange(2, dtype=np.uint64) * 8)})
    values = Values(request)
    assert values.stacked((("y", "x"),)) is None  # a request's rows are not known to lie back to back
    data = np.arange(4, dtype=np.float32).tobytes()
    values.take(["2.0"], [0, 1], StackedResults(2, {"2.0": StackedOutput(11, (2,), data)}))
    whole = values.stacked((("y", "2.0"),))
    assert isinstance(whole, StackedResults) and whole.stacked == {"y": StackedOutput(11, (2,), data)}
    assert bytes(whole[1]["y"].data) == data[8:]


def test_segment_jobs_and_values_are_named_alike_on_both_sides():
    from mindserve._transport.worker_contract import WorkerArgs, parse_segment, segment_name, value_name, value_ref

    assert segment_name("steps", 3, 4) == "steps#3-4" and parse_segment("steps#3-4") == ("steps", 3, 4)
    for name in ("steps", "steps#", "steps#3", "steps#a-4", "#-"):
        assert parse_segment(name) is None, name
    inputs = ["x", "w"]
    for ref in ((0, 0), (0, 1), (2, 0), (12, 3)):
        assert value_ref(inputs, value_name(inputs, *ref)) == ref
    for name in ("y", "0.1", "1.", ".1", "a.b"):
        assert value_ref(inputs, name) is None, name
    args = WorkerArgs(7, 8, 9, "/srv", "s", 1, 0, python_only=1)
    assert args.to_argv()[-2:] == ["--python-only", "1"] and WorkerArgs.from_argv(args.to_argv()) == args
    assert "--python-only" not in WorkerArgs(7, 8, 9, "/srv", "s", 1, 0).to_argv()
