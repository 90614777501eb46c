"""MindIR models served through MindSpore: networks exported by MindSpore at test time (``mindspore.export``),
served by a real server with one CPU worker, called with the client; results checked against numpy."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mindserve.client import Client
from support import servables
from support.processes import free_port, start_server
from support.starts import assert_clean_failure, run_start, start_call

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

# y = x @ W + B (an nn.Dense with these weights; nn.Dense keeps its weight as [out, in]) and k2 = k * 2
W = np.array([[1.0, -2.0], [0.5, 3.0], [-1.5, 4.0]], np.float32)
B = np.array([0.25, -1.0], np.float32)

# Exports, into the folder given as argv[1]:
#   dense_fixed4.mindir   (x float32 [4, 3], k int32 [4]) -> (x @ W + B, k * 2): a fixed batch of 4
#   dense_dynamic.mindir  the same network with a variable batch dim (inputs exported with shape None)
#   add_mul.mindir        (x1, x2 float32 [2, 2]) -> (x1 + x2, x1 * x2)
#   scale.mindir          x float32 [2] -> x * 3                          (subgraph 0 of a two-file model)
#   shift.mindir          (x, y float32 [2]) -> (x - y, (x + y, x))        (subgraph 1: a nested tuple output)
EXPORT_SCRIPT = """
import sys
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

ms.set_device("CPU")
folder, W, B = sys.argv[1], np.array(json.loads(sys.argv[2]), np.float32), np.array(json.loads(sys.argv[3]), np.float32)


class Dense(nn.Cell):
    def __init__(self):
        super().__init__()
        self.dense = nn.Dense(3, 2, weight_init=Tensor(W.T.copy()), bias_init=Tensor(B))

    def construct(self, x, k):
        return self.dense(x), k * 2


class AddMul(nn.Cell):
    def construct(self, x1, x2):
        return x1 + x2, x1 * x2


class Scale(nn.Cell):
    def construct(self, x):
        return x * 3


class Shift(nn.Cell):
    def construct(self, x, y):
        return x - y, (x + y, x)


def export(net, name, *inputs):
    ms.export(net, *inputs, file_name=folder + "/" + name, file_format="MINDIR")


f32 = ms.float32
export(Dense(), "dense_fixed4", Tensor(np.zeros((4, 3), np.float32)), Tensor(np.zeros(4, np.int32)))
export(Dense(), "dense_dynamic", Tensor(shape=[None, 3], dtype=f32), Tensor(shape=[None], dtype=ms.int32))
export(AddMul(), "add_mul", Tensor(np.zeros((2, 2), np.float32)), Tensor(np.zeros((2, 2), np.float32)))
export(Scale(), "scale", Tensor(np.zeros(2, np.float32)))
export(Shift(), "shift", Tensor(np.zeros(2, np.float32)), Tensor(np.zeros(2, np.float32)))
"""


def export_models(folder: str, script_dir: str) -> None:
    """Export the networks of EXPORT_SCRIPT into ``folder`` with MindSpore, in a process of its own (the test
    process never imports MindSpore). MindSpore compiles a network from its source file, so the script is
    written to ``script_dir`` first."""
    os.makedirs(folder, exist_ok=True)
    script = os.path.join(script_dir, "export_mindir.py")
    with open(script, "w") as f:
        f.write("import json\n" + EXPORT_SCRIPT)
    done = subprocess.run(
        [sys.executable, script, folder, json.dumps(W.tolist()), json.dumps(B.tolist())],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=script_dir,
    )
    assert done.returncode == 0, done.stdout + done.stderr


CONFIG = """
from mindserve.server import register

dense_fixed = register.declare_model(model_file="dense_fixed4.mindir", model_format="MindIR", with_batch_dim=True,
                                     options={"thread_num": 1, "precision_mode": "origin"})
dense_dynamic = register.declare_model(model_file="dense_dynamic.mindir", model_format="mindir")
add_mul_model = register.declare_model(model_file="add_mul.mindir", model_format="MINDIR", with_batch_dim=False)
pair = register.declare_model(model_file=["scale.mindir", "shift.mindir"], model_format="MindIR",
                              with_batch_dim=False)


@register.register_method(output_names=["y", "k2"])
def dense(x, k):
    return register.add_stage(dense_fixed, x, k, outputs_count=2)


@register.register_method(output_names=["y", "k2"])
def dense_dyn(x, k):
    return register.add_stage(dense_dynamic, x, k, outputs_count=2)


@register.register_method(output_names=["total", "product"])
def add_mul(x1, x2):
    return register.add_stage(add_mul_model, x1, x2, outputs_count=2)


@register.register_method(output_names=["y"])
def scale(x):
    return register.add_stage(pair, x, outputs_count=1)


def call_shift(x, y):
    return pair.call(x, y, subgraph=1)


@register.register_method(output_names=["diff", "total", "same"])
def shift(x, y):
    return register.add_stage(call_shift, x, y, outputs_count=3)


def call_missing(x):
    return pair.call(x, subgraph=2)


@register.register_method(output_names=["y"])
def missing_subgraph(x):
    return register.add_stage(call_missing, x, outputs_count=1)
"""


@pytest.fixture(scope="module")
def mindir_root(tmp_path_factory) -> str:
    """Servable folder with msnet (CONFIG, version 1 holding the exported MindIR files)."""
    root = str(tmp_path_factory.mktemp("mindir_servables"))
    path = servables.write(root, "msnet", CONFIG)
    export_models(os.path.join(path, "1"), str(tmp_path_factory.mktemp("mindir_export")))
    return root


@pytest.fixture(scope="module")
def address(mindir_root, tmp_path_factory):
    """msnet served on TCP by one CPU worker."""
    tmp = tmp_path_factory.mktemp("mindir_server")
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp,
        f"""
        server.start_servables(server.ServableStartConfig({mindir_root!r}, "msnet", device_ids=(0,)))
        server.start_grpc_server({address!r})
    """,
        address,
    )
    yield address
    server.stop()


def _dense_instances(count: int) -> list[dict]:
    # small halves and integers: float32 sums of products are exact, so results compare with ==
    rows = np.arange(count * 3, dtype=np.float32).reshape(count, 3) * 0.5 - 2
    return [{"x": rows[i], "k": np.int32(i - 1)} for i in range(count)]


def _assert_dense(results: list, instances: list) -> None:
    assert len(results) == len(instances)
    for result, instance in zip(results, instances):
        assert set(result) == {"y", "k2"}, result
        expected = instance["x"] @ W + B
        assert result["y"].dtype == np.float32 and result["y"].shape == (2,)
        np.testing.assert_array_equal(result["y"], expected)
        assert result["k2"].dtype == np.int32 and result["k2"].shape == ()
        assert result["k2"] == instance["k"] * 2


@pytest.mark.parametrize("count", [1, 4, 5, 9])
def test_fixed_batch_of_four(address, count):
    """Instances stacked into batches of 4, the last padded; outputs split back per instance."""
    instances = _dense_instances(count)
    _assert_dense(Client(address, "msnet", "dense").infer(instances), instances)


def test_dynamic_batch(address):
    instances = _dense_instances(7)
    _assert_dense(Client(address, "msnet", "dense_dyn").infer(instances), instances)


def test_model_without_batch_dim_two_outputs(address):
    x1 = np.array([[1.5, -2.0], [3.0, 0.25]], np.float32)
    x2 = np.array([[2.0, 4.0], [-1.0, 8.0]], np.float32)
    results = Client(address, "msnet", "add_mul").infer([{"x1": x1, "x2": x2}, {"x1": x2, "x2": x2}])
    np.testing.assert_array_equal(results[0]["total"], x1 + x2)
    np.testing.assert_array_equal(results[0]["product"], x1 * x2)
    np.testing.assert_array_equal(results[1]["total"], x2 + x2)
    np.testing.assert_array_equal(results[1]["product"], x2 * x2)
    assert results[0]["total"].dtype == np.float32 and results[0]["total"].shape == (2, 2)


def test_input_dtype_and_size_come_from_the_mindir_file(address):
    """The specs read from the file check each instance: a bad one fails alone."""
    good = _dense_instances(1)[0]
    results = Client(address, "msnet", "dense").infer(
        [
            {"x": good["x"].astype(np.float64), "k": good["k"]},
            {"x": np.zeros(4, np.float32), "k": good["k"]},
            {"x": good["x"], "k": np.int64(1)},
            good,
        ]
    )
    assert results[0] == {
        "error": "Given model input 0 data type kMSI_Float64 not match the data type kMSI_Float32 "
        "defined in model: input 'x' of model dense_fixed4.mindir takes float32 [3], given "
        "float64 [3]"
    }
    assert results[1] == {
        "error": "Given model input 0 size 16 not match the size 12 defined in model: input 'x' of "
        "model dense_fixed4.mindir takes float32 [3], given float32 [4]"
    }
    assert results[2]["error"] == (
        "Given model input 1 data type kMSI_Int64 not match the data type "
        "kMSI_Int32 defined in model: input 'k' of model dense_fixed4.mindir takes int32 "
        "[], given int64 []"
    )
    _assert_dense(results[3:], [good])


def test_subgraph_zero_through_add_stage(address):
    x = np.array([1.5, -4.0], np.float32)
    result = Client(address, "msnet", "scale").infer({"x": x})
    np.testing.assert_array_equal(result[0]["y"], x * 3)


def test_subgraph_one_through_model_call(address):
    """Subgraph 1 takes two inputs and gives a nested tuple, flattened into three outputs."""
    x, y = np.array([1.5, -4.0], np.float32), np.array([0.5, 2.0], np.float32)
    result = Client(address, "msnet", "shift").infer({"x": x, "y": y})[0]
    np.testing.assert_array_equal(result["diff"], x - y)
    np.testing.assert_array_equal(result["total"], x + y)
    np.testing.assert_array_equal(result["same"], x)


def test_subgraph_out_of_range(address):
    result = Client(address, "msnet", "missing_subgraph").infer({"x": np.zeros(2, np.float32)})
    assert result == {
        "error": "Call Function 'msnet.call_missing' Failed, method: 'missing_subgraph', stage "
        "index(begin with 1): 1, error msg: Model(scale.mindir;shift.mindir).call() failed: "
        "The model does not have subgraph of index 2, the subgraph count of the model is 2"
    }


BAD_CONFIG = """
from mindserve.server import register

model = register.declare_model(model_file="broken.mindir", model_format="MindIR", with_batch_dim=False)


@register.register_method(output_names=["y"])
def predict(x):
    return register.add_stage(model, x, outputs_count=1)
"""


def test_bad_mindir_file_fails_start(tmp_path):
    root = str(tmp_path / "servables")
    path = servables.write(root, "broken", BAD_CONFIG)
    os.makedirs(os.path.join(path, "1"))
    model = os.path.join(path, "1", "broken.mindir")
    with open(model, "wb") as f:
        f.write(b"this is not a MindIR model")
    outcome = run_start(tmp_path, start_call(root, "broken"))
    assert outcome.error == (
        f"Load model failed, servable directory: '{root}', servable name: 'broken', model file: "
        f"'broken.mindir', version number 1, load error details: '{model}' is not a MindIR model "
        f"file (it does not parse as MindSpore's ModelProto with a graph)"
    )
    assert_clean_failure(outcome)


# Runs in a process of its own (MindSpore's device and threads are set once per process): the device checks,
# then loads servable msopts (two MindIR models, thread_num 2) with MindSpore's threads_num wrapped to record
# its calls, then a model that asks for other threads. Prints one JSON line.
BACKEND_SCRIPT = """
import json
import sys
import mindspore as ms
from mindspore._c_expression import RuntimeConf
from mindserve import _backends
from mindserve._backends.options import check_options
from mindserve._workers.loader import load_servable

root, model = sys.argv[1], sys.argv[2]
report = {}


def error_of(device_type, options):
    try:
        _backends.load_model("mindir", model, device_type, 1, check_options("mindir", options))
    except RuntimeError as exc:
        return str(exc)
    return None


report["gpu"] = error_of("gpu", {})
report["ascend"] = error_of("ascend", {})
report["precision"] = error_of(None, {"precision_mode": "force_fp16"})
calls = []
real_threads_num = ms.device_context.cpu.op_tuning.threads_num
ms.device_context.cpu.op_tuning.threads_num = lambda n: (calls.append(n), real_threads_num(n))[1]
executor = load_servable(root, "msopts", 1, None, 0)
report["calls"] = calls
report["configured"] = RuntimeConf.get_instance().is_op_threads_num_configured()
report["specs"] = [[[s.name, s.dtype, list(s.shape)] for s in session.inputs + session.outputs]
                   for runner in executor.runners.values() for session in runner.sessions]
report["other_threads"] = error_of(None, {"thread_num": 3})
print("REPORT " + json.dumps(report))
"""

OPTIONS_CONFIG = """
from mindserve.server import register

fixed = register.declare_model(model_file="dense_fixed4.mindir", model_format="MindIR", options={"thread_num": 2})
dynamic = register.declare_model(model_file="dense_dynamic.mindir", model_format="MindIR", options={"thread_num": 2})
"""


def test_backend_devices_and_threads(mindir_root, tmp_path):
    root = str(tmp_path / "servables")
    path = servables.write(root, "msopts", OPTIONS_CONFIG)
    os.symlink(os.path.join(mindir_root, "msnet", "1"), os.path.join(path, "1"))
    model = os.path.join(path, "1", "add_mul.mindir")
    done = subprocess.run(
        [sys.executable, "-c", BACKEND_SCRIPT, root, model],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    report = json.loads(lines[0][len("REPORT ") :])
    version = importlib.metadata.version("mindspore")
    for device in ("GPU", "Ascend"):
        assert report[device.lower()] == (
            f"device type {device} is not available in the installed MindSpore "
            f"{version}: it needs MindSpore built for {device}, on a machine with that "
            f"device"
        )
    assert report["precision"] == (
        "option 'precision_mode' 'force_fp16' needs device type Ascend (a CANN precision "
        "mode); on CPU only 'origin' is supported"
    )
    # both models asked for 2 threads: MindSpore's per-process setting was made once, with 2
    assert report["calls"] == [2] and report["configured"] is True
    f32, i32 = 11, 6
    assert sorted(report["specs"]) == sorted(
        [
            [["x", f32, [4, 3]], ["k", i32, [4]], ["output_0", f32, [4, 2]], ["output_1", i32, [4]]],
            [["x", f32, [-1, 3]], ["k", i32, [-1]], ["output_0", f32, [-1, 2]], ["output_1", i32, [-1]]],
        ]
    )
    assert report["other_threads"] == (
        "option 'thread_num' 3 differs from 2 of a MindIR model loaded before in this "
        "worker; MindSpore sets it once per process, so the MindIR models of a servable "
        "must use the same value"
    )
