"""The worker's fast lane (mindserve/_workers/fast_lane.py), driven in process: jobs written into a channel the
way the master writes them, popped as the worker pops them, answered by FastLane.run or by the general path
(read_job + _run_method), and the replies decoded as the master decodes them. Both paths must answer every job
alike, byte for byte and error text for error text; the fast lane either answers a whole batch or leaves it
untouched for the general path."""

from __future__ import annotations

import itertools
import json
import os
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from mindserve import _dtypes
from mindserve._errors import FAILED, INVALID_INPUTS, SYSTEM_ERROR, ServingError
from mindserve._servable import definition
from mindserve._tensor import RawTensor, StackedInput, StackedInputs, StackedResults
from mindserve._transport import blocks
from mindserve._transport.job_flow import Job
from mindserve._transport.jobs import decode_reply as _decode_reply
from mindserve._transport.shm_channel import REPLIES, REQUESTS, ShmChannel
from mindserve._workers.__main__ import answer_batch
from mindserve._workers.fast_lane import FastLane
from mindserve._workers.job_io import read_job
from mindserve._workers.loader import load_servable
from support import model_files, servables

SEG = 1 << 20
NAME = "fastlane"
F32, I64 = _dtypes.MS_FLOAT32, _dtypes.MS_INT64

# fixed: the probe model (y = x * 2, n = the rows of the run) with a batch of 4; dynamic: the same with a
# variable batch; add: y = x1 + x2 on [N, 2]; add_any: the same on [N, M] (any row length: rows of different
# lengths pass every check and fail in ONNX Runtime); whole: the probe model declared without a batch dim;
# text: y = x * 2 and x as strings (see _text_model).
CONFIG = """
from mindserve.server import register

fixed = register.declare_model(model_file="probe_fixed4.onnx", model_format="ONNX", with_batch_dim=True)
dynamic = register.declare_model(model_file="probe_dynamic.onnx", model_format="ONNX", with_batch_dim=True)
add = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=True)
add_any = register.declare_model(model_file="add_any.onnx", model_format="ONNX", with_batch_dim=True)
whole = register.declare_model(model_file="probe_whole.onnx", model_format="ONNX", with_batch_dim=False)
text = register.declare_model(model_file="text.onnx", model_format="ONNX", with_batch_dim=True)


def identity(x):
    return x


@register.register_method(output_names=["y", "n"])
def probe_fixed(x):
    return register.add_stage(fixed, x, outputs_count=2)


@register.register_method(output_names=["y", "n"])
def probe_dynamic(x):
    return register.add_stage(dynamic, x, outputs_count=2)


@register.register_method(output_names=["n", "y"])
def n_first(x):
    y, n = register.add_stage(dynamic, x, outputs_count=2)
    return n, y


@register.register_method(output_names=["y"])
def add_xy(x1, x2):
    return register.add_stage(add, x1, x2, outputs_count=1)


@register.register_method(output_names=["y"])
def add_twice(x):
    return register.add_stage(add, x, x, outputs_count=1)


@register.register_method(output_names=["y"])
def add_rows(x1, x2):
    return register.add_stage(add_any, x1, x2, outputs_count=1)


@register.register_method(output_names=["y"])
def then_python(x):
    y, n = register.add_stage(dynamic, x, outputs_count=2)
    return register.add_stage(identity, y, outputs_count=1)


@register.register_method(output_names=["y"])
def python_only(x):
    return register.add_stage(identity, x, outputs_count=1)


@register.register_method(output_names=["y", "n"])
def whole_instance(x):
    return register.add_stage(whole, x, outputs_count=2)


@register.register_method(output_names=["y", "x"])
def echo_input(x):
    y, n = register.add_stage(dynamic, x, outputs_count=2)
    return y, x


@register.register_method(output_names=["y", "n"])
def unused_input(x, extra):
    return register.add_stage(dynamic, x, outputs_count=2)


@register.register_method(output_names=["y", "t"])
def as_text(x):
    return register.add_stage(text, x, outputs_count=2)
"""


def _text_model(path: str) -> None:
    """y = x * 2 and t = x as strings ([N, 2] float32 in): an output no reply carries (a string tensor comes
    out of ONNX Runtime as an array of Python objects)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    t = helper.make_tensor_value_info("t", TensorProto.STRING, ["N", 2])
    two = numpy_helper.from_array(np.array([2.0], np.float32), "two")
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["y"]),
        helper.make_node("Cast", ["x"], ["t"], to=TensorProto.STRING),
    ]
    model_files._save(helper.make_graph(nodes, "text", [x], [y, t], initializer=[two]), path)


@pytest.fixture(scope="module")
def servable_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fast_lane"))
    folder = servables.write(root, NAME, CONFIG)
    models = os.path.join(folder, "1")
    os.makedirs(models)
    model_files.batch_probe_model(os.path.join(models, "probe_fixed4.onnx"), batch_dim=4)
    model_files.batch_probe_model(os.path.join(models, "probe_dynamic.onnx"))
    model_files.batch_probe_model(os.path.join(models, "probe_whole.onnx"))
    model_files.add_model(os.path.join(models, "add.onnx"))
    model_files.add_model(os.path.join(models, "add_any.onnx"), row_shape=("M",))
    _text_model(os.path.join(models, "text.onnx"))
    return root


def _load(root: str, max_batch_size=None):
    """The servable loaded in this process as a worker loads it; what the load left (the registry, the config's
    modules, the import path) is undone, so that it can be loaded again."""
    try:
        return load_servable(root, NAME, 1, None, 0, max_batch_size)
    finally:
        definition.begin_servable("")
        sys.modules.pop(f"{NAME}.servable_config", None)
        sys.modules.pop(NAME, None)
        if os.path.abspath(root) in sys.path:
            sys.path.remove(os.path.abspath(root))


@pytest.fixture(scope="module")
def executor(servable_root):
    return _load(servable_root)


@pytest.fixture(scope="module")
def executor_max2(servable_root):
    """The same servable in a worker started with max_batch_size=2."""
    return _load(servable_root, 2)


# ---------------------------------------------------------------------------------------------------- harness


class Worker:
    """A channel with the master's side (jobs in, replies out) and the worker's (popped batches answered by the
    fast lane or the general path), all in this process."""

    def __init__(self, executor):
        self.executor = executor
        self.channel = ShmChannel.create(SEG, "the test")
        self.event_fd = os.eventfd(0, os.EFD_NONBLOCK)
        self.lane = FastLane(executor, self.channel, self.event_fd)
        self._ids = itertools.count(1)
        self._jobs: dict[int, tuple[int, int, str]] = {}  # id -> (request offset, count, method)

    def close(self) -> None:
        os.close(self.event_fd)
        self.channel.close_fd()
        self.channel.unmap()

    def push(self, method: str, instances) -> int:
        """Queue a job as the master does; its id."""
        job = Job(method, instances, None, 0)  # type: ignore[arg-type]  # no future: nothing here awaits it
        ch = self.channel
        offset = ch.alloc(REQUESTS, job.size)
        job.writer.write(ch.view, offset, job.head)
        return self._queue(offset, job.size, job.count, method)

    def push_block(self, block: bytes, size: int, count: int, method: str) -> int:
        """Queue a hand-made job: ``block`` copied into a block of its own, the job entry saying ``size``."""
        offset = self.channel.alloc(REQUESTS, max(size, len(block), 1))
        self.channel.view[offset : offset + len(block)] = block
        return self._queue(offset, size, count, method)

    def _queue(self, offset: int, size: int, count: int, method: str) -> int:
        job_id = next(self._ids)
        self.channel.push_job(job_id, offset, size, count)
        self._jobs[job_id] = (offset, count, method)
        return job_id

    def pop(self) -> list:
        assert self._jobs, "nothing queued: pop_batch would wait for ever"
        return self.channel.pop_batch(0, 0)

    def general(self, entries: list) -> None:
        """The general path, as serve() takes a batch the fast lane left: the jobs by method."""
        answer_batch(self.executor, entries, self.channel, self.event_fd)

    def replies(self) -> dict[int, object]:
        """Every reply queued, decoded as the master decodes it, by job id; both blocks of each job freed."""
        out: dict[int, object] = {}
        for job_id, offset, size, _ in self.channel.pop_done():
            request_offset, count, method = self._jobs.pop(job_id)
            assert self.channel.contains(REPLIES, offset, size)
            data = bytes(self.channel.view[offset : offset + size])
            self.channel.release(REQUESTS, request_offset)
            self.channel.release(REPLIES, offset)
            known = self.executor.servable.methods.get(method)
            out[job_id] = _decode_reply(memoryview(data), count, known.output_names if known else ["y"])
        return out


@pytest.fixture
def worker(executor):
    w = Worker(executor)
    yield w
    w.close()


@pytest.fixture
def worker_max2(executor_max2):
    w = Worker(executor_max2)
    yield w
    w.close()


def stacked(**arrays: np.ndarray) -> StackedInputs:
    """Instances as a frontend reads them in place: each input's rows inside a larger source (a request's
    bytes), 5 bytes of something else before each row."""
    inputs = {}
    count = None
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        count = array.shape[0]
        row = array.nbytes // count
        source = b"".join(b"\xee" * 5 + array[i].tobytes() for i in range(count))
        offsets = np.array([5 + i * (row + 5) for i in range(count)], np.uint64)
        inputs[name] = StackedInput(_dtypes.CODE_OF[array.dtype], array.shape[1:], row, source, offsets)
    assert count is not None, "give at least one input"
    return StackedInputs(count, inputs)


def raw(value) -> RawTensor:
    if isinstance(value, str):
        return RawTensor(_dtypes.MS_STRING, (), value.encode())
    return RawTensor(_dtypes.CODE_OF[value.dtype], value.shape, value.tobytes())


def listed(**columns: list) -> list[dict]:
    """Instances as a list of dicts of RawTensors (the master stacks them when they are numeric and alike)."""
    names = list(columns)
    return [{n: raw(v) for n, v in zip(names, values)} for values in zip(*columns.values())]


def plain(results) -> list:
    """Decoded results as comparable values: per instance {name: (dtype, shape, bytes)} or (code, message)."""
    out: list = []
    for item in results:
        if isinstance(item, ServingError):
            out.append((item.code, item.message))
        else:
            out.append({n: (t.dtype, tuple(t.shape), bytes(t.data)) for n, t in item.items()})
    return out


def tensor(array: np.ndarray) -> tuple:
    return _dtypes.CODE_OF[array.dtype], tuple(array.shape), array.tobytes()


def answer_fast(worker: Worker, jobs: list) -> tuple[bool, list]:
    ids = [worker.push(method, instances) for method, instances in jobs]
    ran = worker.lane.run(worker.pop())
    replies = worker.replies()
    assert sorted(replies) == sorted(ids) if ran else replies == {}
    return ran, [replies.get(i) for i in ids]


def answer_general(worker: Worker, jobs: list) -> list:
    ids = [worker.push(method, instances) for method, instances in jobs]
    worker.general(worker.pop())
    replies = worker.replies()
    assert sorted(replies) == sorted(ids)
    return [replies[i] for i in ids]


def both_paths(worker: Worker, jobs: list) -> list:
    """The batch answered by the fast lane (which must take it), then the same jobs by the general path: the
    decoded replies, equal in both, as plain values per job."""
    ran, fast = answer_fast(worker, jobs)
    assert ran is True
    general = answer_general(worker, jobs)
    fast, general = [plain(r) for r in fast], [plain(r) for r in general]
    assert fast == general
    return fast


def general_only(worker: Worker, jobs: list) -> list:
    """The fast lane leaves the batch (answering nothing); the general path, as serve() then runs it, answers
    every job: its decoded replies as plain values per job."""
    ids = [worker.push(method, instances) for method, instances in jobs]
    entries = worker.pop()
    assert worker.lane.run(entries) is False
    assert worker.channel.pop_done() == []
    worker.general(entries)
    replies = worker.replies()
    assert sorted(replies) == sorted(ids)
    return [plain(replies[i]) for i in ids]


def xs(count: int, seed: int = 0, row=(2,), dtype=np.float32) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((count, *row)) * 100).astype(dtype)


def probe_results(x: np.ndarray, rows: int, names=("y", "n")) -> list:
    """What the probe model answers for each row of ``x`` run in a batch of ``rows`` rows."""
    values = {"y": lambda r: tensor(r * np.float32(2)), "n": lambda r: tensor(np.array(rows, np.int64))}
    return [{n: values[n](r) for n in names} for r in x]


# -------------------------------------------------------------------------------------------- the fast lane answers


def test_one_stacked_job(worker):
    x = xs(3)
    (result,) = both_paths(worker, [("probe_dynamic", stacked(x=x))])
    assert result == probe_results(x, 3)


def test_fast_replies_are_stacked(worker):
    x = xs(2, seed=1)
    ran, (decoded,) = answer_fast(worker, [("probe_dynamic", stacked(x=x))])
    assert ran is True
    assert isinstance(decoded, StackedResults) and len(decoded) == 2
    assert bytes(decoded.outputs["y"].data) == (x * np.float32(2)).tobytes()
    assert bytes(decoded.outputs["n"].data) == np.array([2, 2], np.int64).tobytes()
    assert (decoded.outputs["y"].dtype, decoded.outputs["y"].row_shape) == (F32, (2,))
    assert (decoded.outputs["n"].dtype, decoded.outputs["n"].row_shape) == (I64, ())


def test_several_jobs_batched_answer_each_job_in_order(worker):
    parts = [xs(2, seed=10), xs(1, seed=11), xs(2, seed=12), xs(3, seed=13)]  # jobs 1 and 3: the same header
    jobs = [("probe_dynamic", stacked(x=p)) for p in parts]
    results = both_paths(worker, jobs)
    assert results == [probe_results(p, 8) for p in parts]  # one run of all 8 rows


def test_stacked_list_instances_and_stacked_inputs_batched_together(worker):
    a, b = xs(2, seed=20), xs(3, seed=21)
    jobs = [("probe_dynamic", listed(x=list(a))), ("probe_dynamic", stacked(x=b))]
    assert both_paths(worker, jobs) == [probe_results(a, 5), probe_results(b, 5)]


def test_outputs_in_another_order_than_the_model_gives_them(worker):
    x = xs(3, seed=30)
    (result,) = both_paths(worker, [("n_first", stacked(x=x))])
    assert result == probe_results(x, 3, names=("n", "y"))
    assert [list(r) for r in result] == [["n", "y"]] * 3


def test_two_inputs_over_several_jobs(worker):
    x1, x2 = xs(3, seed=40), xs(3, seed=41)
    y1, y2 = xs(2, seed=42), xs(2, seed=43)
    results = both_paths(worker, [("add_xy", stacked(x1=x1, x2=x2)), ("add_xy", stacked(x2=y2, x1=y1))])
    assert results == [[{"y": tensor(a + b)} for a, b in zip(x1, x2)], [{"y": tensor(a + b)} for a, b in zip(y1, y2)]]


def test_one_method_input_feeding_two_model_inputs(worker):
    x = xs(4, seed=50)
    (result,) = both_paths(worker, [("add_twice", stacked(x=x))])
    assert result == [{"y": tensor(r + r)} for r in x]


def test_fixed_batch_larger_than_the_jobs_drops_the_padding(worker):
    a, b = xs(1, seed=60), xs(2, seed=61)
    ran, fast = answer_fast(worker, [("probe_fixed", stacked(x=a)), ("probe_fixed", stacked(x=b))])
    assert ran is True
    assert [len(r) for r in fast] == [1, 2]  # 3 of the 4 rows of the run: the padding row answers nobody
    results = both_paths(worker, [("probe_fixed", stacked(x=a)), ("probe_fixed", stacked(x=b))])
    assert results == [probe_results(a, 4), probe_results(b, 4)]


def test_fixed_batch_filled_exactly(worker):
    x = xs(4, seed=62)
    assert both_paths(worker, [("probe_fixed", stacked(x=x))]) == [probe_results(x, 4)]


def test_rows_of_another_shape_of_the_same_size_are_reshaped(worker):
    x = xs(3, seed=70, row=(1, 2))  # a fixed instance shape [2] takes any row of 2 float32
    (result,) = both_paths(worker, [("probe_dynamic", stacked(x=x))])
    assert result == probe_results(x.reshape(3, 2), 3)


def test_max_batch_size_reached_exactly(worker_max2):
    x = xs(2, seed=80)
    assert both_paths(worker_max2, [("probe_dynamic", stacked(x=x))]) == [probe_results(x, 2)]


def test_special_float_bits_come_back_exactly(worker):
    x = np.array([[np.nan, -0.0], [np.inf, -np.inf], [np.finfo(np.float32).tiny, 1.5e38]], np.float32)
    (result,) = both_paths(worker, [("add_twice", stacked(x=x))])
    assert result == [{"y": tensor(r + r)} for r in x]


# ---------------------------------------------------------------------------------------- left to the general path


def test_jobs_of_two_methods_in_one_batch(worker):
    x, x1, x2 = xs(2, seed=90), xs(1, seed=91), xs(1, seed=92)
    results = general_only(worker, [("probe_dynamic", stacked(x=x)), ("add_xy", stacked(x1=x1, x2=x2))])
    assert results == [probe_results(x, 2), [{"y": tensor(x1[0] + x2[0])}]]


@pytest.mark.parametrize("method", ["then_python", "python_only"])
def test_a_method_with_a_python_stage(worker, method):
    x = xs(2, seed=100)
    expected = [{"y": tensor(r * np.float32(2) if method == "then_python" else r)} for r in x]
    assert general_only(worker, [(method, stacked(x=x))]) == [expected]


def test_a_model_without_batch_dim(worker):
    x = xs(3, seed=110, row=(1, 2))  # each instance is a whole input of [rows, 2]: one row here
    (result,) = general_only(worker, [("whole_instance", stacked(x=x))])
    assert result == [{"y": tensor(r * np.float32(2)), "n": tensor(np.array([1], np.int64))} for r in x]


def test_a_method_output_that_is_a_method_input(worker):
    x = xs(2, seed=120)
    (result,) = general_only(worker, [("echo_input", stacked(x=x))])
    assert result == [{"y": tensor(r * np.float32(2)), "x": tensor(r)} for r in x]


def test_an_unknown_method(worker):
    (result,) = general_only(worker, [("nope", stacked(x=xs(2)))])
    assert result == [(SYSTEM_ERROR, "unknown method nope")] * 2


def test_string_instances(worker):
    (result,) = general_only(worker, [("probe_dynamic", listed(x=["ab", "c"]))])
    assert (
        result
        == [
            (
                INVALID_INPUTS,
                "Given model input 0 data type kMSI_String not match the data type "
                "kMSI_Float32 defined in model: input 'x' of model probe_dynamic.onnx takes "
                "float32 [2], given str",
            )
        ]
        * 2
    )


def test_instances_of_differing_shapes(worker):
    rows = [
        np.array([1.5, -2.0], np.float32),
        np.array([1.0, 2.0, 3.0], np.float32),
        np.array([[4.0, 8.0]], np.float32),
    ]
    (result,) = general_only(worker, [("probe_dynamic", listed(x=rows))])
    assert result == [
        {"y": tensor(rows[0] * 2), "n": tensor(np.array(2, np.int64))},
        (
            INVALID_INPUTS,
            "Given model input 0 size 12 not match the size 8 defined in model: input 'x' of model "
            "probe_dynamic.onnx takes float32 [2], given float32 [3]",
        ),
        {"y": tensor(rows[2].reshape(2) * 2), "n": tensor(np.array(2, np.int64))},
    ]


def test_a_stacked_job_batched_with_one_that_is_not(worker):
    x = xs(2, seed=130)
    rows = [np.array([1.0, 2.0], np.float32), np.array([[3.0, 4.0]], np.float32)]
    results = general_only(worker, [("probe_dynamic", stacked(x=x)), ("probe_dynamic", listed(x=rows))])
    # the method's column is not stacked: the instances of both jobs are checked one by one, then run as one
    # group (all of instance shape [2])
    assert results == [
        probe_results(x, 4),
        [{"y": tensor(r.reshape(2) * 2), "n": tensor(np.array(4, np.int64))} for r in rows],
    ]


def test_jobs_whose_row_shapes_differ(worker):
    a, b = xs(1, seed=140), xs(2, seed=141, row=(1, 2))
    results = general_only(worker, [("probe_dynamic", stacked(x=a)), ("probe_dynamic", stacked(x=b))])
    # the general path runs the jobs' stacked columns as one (the model's instance shape is the same)
    assert results == [probe_results(a, 3), probe_results(b.reshape(2, 2), 3)]


def test_more_instances_than_the_fixed_batch(worker):
    x = xs(5, seed=150)
    (result,) = general_only(worker, [("probe_fixed", stacked(x=x))])
    assert result == probe_results(x, 4)  # runs of 4 and 1 padded to 4


def test_jobs_together_over_the_fixed_batch(worker):
    a, b = xs(3, seed=160), xs(2, seed=161)
    results = general_only(worker, [("probe_fixed", stacked(x=a)), ("probe_fixed", stacked(x=b))])
    assert results == [probe_results(a, 4), probe_results(b, 4)]


def test_more_instances_than_max_batch_size(worker_max2):
    x = xs(3, seed=170)
    (result,) = general_only(worker_max2, [("probe_dynamic", stacked(x=x))])
    assert result == probe_results(x[:2], 2) + probe_results(x[2:], 1)  # runs of 2 and 1


def test_jobs_together_over_max_batch_size(worker_max2):
    a, b = xs(1, seed=180), xs(2, seed=181)
    results = general_only(worker_max2, [("probe_dynamic", stacked(x=a)), ("probe_dynamic", stacked(x=b))])
    assert results == [probe_results(a, 2), probe_results(b[:1], 2) + probe_results(b[1:], 1)]


def test_an_input_of_another_dtype(worker):
    x = xs(3, seed=190, dtype=np.float64)
    (result,) = general_only(worker, [("probe_dynamic", stacked(x=x))])
    assert (
        result
        == [
            (
                INVALID_INPUTS,
                "Given model input 0 data type kMSI_Float64 not match the data type "
                "kMSI_Float32 defined in model: input 'x' of model probe_dynamic.onnx takes "
                "float32 [2], given float64 [2]",
            )
        ]
        * 3
    )


def test_an_input_of_another_size(worker):
    x = xs(2, seed=200, row=(3,))
    (result,) = general_only(worker, [("probe_dynamic", stacked(x=x))])
    assert (
        result
        == [
            (
                INVALID_INPUTS,
                "Given model input 0 size 12 not match the size 8 defined in model: input 'x' "
                "of model probe_dynamic.onnx takes float32 [2], given float32 [3]",
            )
        ]
        * 2
    )


def test_a_second_input_of_another_dtype(worker):
    x1, x2 = xs(2, seed=210), xs(2, seed=211, dtype=np.int64)
    (result,) = general_only(worker, [("add_xy", stacked(x1=x1, x2=x2))])
    assert (
        result
        == [
            (
                INVALID_INPUTS,
                "Given model input 1 data type kMSI_Int64 not match the data type "
                "kMSI_Float32 defined in model: input 'x2' of model add.onnx takes float32 "
                "[2], given int64 [2]",
            )
        ]
        * 2
    )


def test_an_input_that_fits_after_one_that_does_not_is_still_refused(worker):
    # the fast lane remembers which kinds of column fit the model: a kind refused once stays refused, and a
    # kind that fits stays accepted
    bad, good = xs(2, seed=220, dtype=np.float64), xs(2, seed=221)
    for _ in range(2):
        assert general_only(worker, [("probe_dynamic", stacked(x=bad))]) == [
            [
                (
                    INVALID_INPUTS,
                    "Given model input 0 data type kMSI_Float64 not match the data type kMSI_Float32 "
                    "defined in model: input 'x' of model probe_dynamic.onnx takes float32 [2], given "
                    "float64 [2]",
                )
            ]
            * 2
        ]
        assert both_paths(worker, [("probe_dynamic", stacked(x=good))]) == [probe_results(good, 2)]


@pytest.mark.parametrize("ndims", [17, 33, 200])
def test_a_job_of_too_many_dims_fails_alone(worker, ndims):
    """The frontends refuse such tensors; a worker that gets one anyway fails that job, not itself."""
    head = json.dumps({"m": "probe_dynamic", "n": 1, "in": {"x": ["s", F32, [1] * (ndims - 1) + [2], 0]}}).encode()
    block = blocks.PREFIX.pack(len(head), 0) + head
    block += bytes(blocks.align(len(block)) - len(block)) + np.ones(2, np.float32).tobytes()
    bad = worker.push_block(block, len(block), 1, "probe_dynamic")
    x = xs(2, seed=290)
    good = worker.push("probe_dynamic", stacked(x=x))
    entries = worker.pop()
    assert worker.lane.run(entries) is False
    worker.general(entries)
    replies = worker.replies()
    assert plain(replies[bad]) == [(SYSTEM_ERROR, f"bad job: bad tensor shape {str([1] * (ndims - 1) + [2])[:200]}")]
    assert plain(replies[good]) == probe_results(x, 2)


def test_a_job_without_an_input_of_the_model(worker):
    (result,) = general_only(worker, [("add_xy", stacked(x1=xs(2)))])
    assert result == [(SYSTEM_ERROR, "job without input x2")] * 2


# ---------------------------------------------------------------------------------------------------- run-time failures


def _run_failure(worker: Worker, jobs: list) -> list:
    """A batch whose model run fails: the fast lane answers a single row itself, and leaves several rows to the
    general path, which runs them again in parts so that only the rows that fail carry the error."""
    rows = sum(len(instances) for _, instances in jobs)
    results = both_paths(worker, jobs) if rows == 1 else general_only(worker, jobs)
    (first, *_), *_ = results
    assert isinstance(first, tuple) and first[0] == FAILED
    assert first[1].startswith("Model(add_any.onnx) run failed: "), first[1]
    assert all(item == first for result in results for item in result)
    return results


def test_a_model_run_that_fails(worker):
    x1, x2 = xs(2, seed=230), xs(2, seed=231, row=(3,))  # rows of 2 and 3: ONNX Runtime cannot add them
    results = _run_failure(worker, [("add_rows", stacked(x1=x1, x2=x2))])
    assert [len(r) for r in results] == [2]


def test_a_model_run_of_one_row_that_fails(worker):
    results = _run_failure(worker, [("add_rows", stacked(x1=xs(1, seed=232), x2=xs(1, seed=233, row=(3,))))])
    assert [len(r) for r in results] == [1]


def test_a_model_run_that_fails_fails_every_job_of_the_batch(worker):
    jobs = [("add_rows", stacked(x1=xs(n, seed=240 + n), x2=xs(n, seed=250 + n, row=(3,)))) for n in (1, 3, 2)]
    results = _run_failure(worker, jobs)
    assert [len(r) for r in results] == [1, 3, 2]


def test_the_same_model_runs_rows_that_fit(worker):
    x1, x2 = xs(2, seed=260, row=(5,)), xs(2, seed=261, row=(5,))
    (result,) = both_paths(worker, [("add_rows", stacked(x1=x1, x2=x2))])
    assert result == [{"y": tensor(a + b)} for a, b in zip(x1, x2)]


# ---------------------------------------------------------------------------------------------------- job headers


def _block_of(method: str, instances) -> tuple[bytes, Job]:
    """A job's whole block, as the master writes it."""
    job = Job(method, instances, None, 0)  # type: ignore[arg-type]  # no future: nothing here awaits it
    buf = bytearray(job.size)
    job.writer.write(memoryview(buf), 0, job.head)
    return bytes(buf), job


def _data_start(job: Job) -> int:
    return blocks.align(blocks.PREFIX.size + len(job.head))


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("cut", [1, 8, "data"])
def test_a_known_job_header_in_a_block_too_short_for_it(worker, cached, cut):
    x = xs(3, seed=270)
    block, job = _block_of("probe_dynamic", stacked(x=x))
    if cached:  # the lane has read this very header before, from a block of the right size
        assert both_paths(worker, [("probe_dynamic", stacked(x=x))]) == [probe_results(x, 3)]
    size = _data_start(job) if cut == "data" else job.size - cut
    worker.push_block(block[:size], size, 3, "probe_dynamic")
    entries = worker.pop()
    assert worker.lane.run(entries) is False
    assert worker.channel.pop_done() == []
    with pytest.raises(blocks.BlockError, match="^tensor reaches past its message block$"):
        read_job(worker.channel, *entries[0][:3])
    worker.channel.release(REQUESTS, entries[0][1])


def test_a_short_block_batched_with_good_ones_leaves_the_whole_batch(worker):
    x = xs(2, seed=280)
    block, job = _block_of("probe_dynamic", stacked(x=x))
    assert both_paths(worker, [("probe_dynamic", stacked(x=x))]) == [probe_results(x, 2)]
    worker.push("probe_dynamic", stacked(x=x))
    worker.push_block(block[:-1], job.size - 1, 2, "probe_dynamic")
    worker.push("probe_dynamic", stacked(x=x))
    entries = worker.pop()
    assert worker.lane.run(entries) is False
    assert worker.channel.pop_done() == []
    for _, offset, _, _ in entries:
        worker.channel.release(REQUESTS, offset)


def test_a_job_header_in_a_block_of_exactly_its_size(worker):
    # the same bytes with the right size: the lane takes it (the checks above are about the size alone)
    x = xs(2, seed=290)
    block, job = _block_of("probe_dynamic", stacked(x=x))
    job_id = worker.push_block(block, job.size, 2, "probe_dynamic")
    assert worker.lane.run(worker.pop()) is True
    assert {k: plain(v) for k, v in worker.replies().items()} == {job_id: probe_results(x, 2)}


def test_a_job_header_in_a_longer_block(worker):
    x = xs(2, seed=300)
    block, job = _block_of("probe_dynamic", stacked(x=x))
    job_id = worker.push_block(block + b"\x77" * 100, job.size + 100, 2, "probe_dynamic")
    assert worker.lane.run(worker.pop()) is True
    assert {k: plain(v) for k, v in worker.replies().items()} == {job_id: probe_results(x, 2)}


def test_job_headers_are_shared_by_jobs_of_one_kind():
    # the master encodes the header of a kind of stacked job once: jobs of one kind carry the same bytes
    # (jobs without a future, as nothing here awaits them: hence the ignores)
    first = Job("probe_dynamic", stacked(x=xs(3, seed=1)), None, 0)  # type: ignore[arg-type]
    second = Job("probe_dynamic", stacked(x=xs(3, seed=2)), None, 0)  # type: ignore[arg-type]
    other = Job("probe_dynamic", stacked(x=xs(2, seed=3)), None, 0)  # type: ignore[arg-type]
    assert first.head == second.head and first.size == second.size
    assert other.head != first.head
    # and the header is what the general encoding gives
    writer = blocks.BlockWriter()
    columns = {"x": blocks.raw_column(writer, [raw(r) for r in xs(3)])}
    assert writer.encode({"m": "probe_dynamic", "n": 3, "in": columns}) == (first.head, first.size)


# ---------------------------------------------------------------------------------------------------- outputs


def test_an_output_that_no_reply_carries(worker):
    # the strings come out as numpy arrays of objects: each instance fails with the general path's text, in both
    x = xs(2, seed=310)
    results = both_paths(worker, [("as_text", stacked(x=x)), ("as_text", stacked(x=x[:1]))])
    text = (
        "Method 'as_text' output 't': unsupported type numpy array of object, a method output must be a numpy "
        "array, str, bytes or a scalar"
    )
    assert results == [[(SYSTEM_ERROR, text)] * 2, [(SYSTEM_ERROR, text)]]


def test_a_job_without_a_method_input_that_the_model_does_not_take(worker):
    x = xs(2, seed=320)
    ran, fast = answer_fast(worker, [("unused_input", stacked(x=x))])
    general = answer_general(worker, [("unused_input", stacked(x=x))])
    assert [plain(r) for r in general] == [[(SYSTEM_ERROR, "job without input extra")] * 2]
    assert ran is False and fast == [None]


def test_a_method_input_that_the_model_does_not_take(worker):
    x = xs(2, seed=330)
    extra = np.arange(6, dtype=np.int8).reshape(2, 3)
    assert both_paths(worker, [("unused_input", stacked(x=x, extra=extra))]) == [probe_results(x, 2)]
