"""Writes the servable directories the tests serve (servable_config.py files and ONNX models)."""

from __future__ import annotations

import os
import textwrap

from support import model_files

ECHO_CONFIG = """
import os
import numpy as np
from mindserve.server import register


def identity(x):
    return x


def pid(x):
    return np.array([os.getpid()], np.int64)


def fail(x):
    raise ValueError("bad value " + str(x))


def pair(x):
    return x, x


def bad_output(x):
    return {"not": "a tensor"}


def double_batch(instances):
    return [(x * 2,) for (x,) in instances]


def double_batch_sizes(instances):
    for (x,) in instances:
        yield x * 2, np.array([len(instances)], np.int64)


@register.register_method(output_names=["y"])
def echo(x):
    return register.add_stage(identity, x, outputs_count=1)


@register.register_method(output_names=["x1", "x2"])
def echo2(x1, x2):
    return x1, x2


@register.register_method(output_names=["pid"])
def worker_pid(x):
    return register.add_stage(pid, x, outputs_count=1)


@register.register_method(output_names=["y"])
def raise_error(x):
    return register.add_stage(fail, x, outputs_count=1)


@register.register_method(output_names=["y"])
def wrong_count(x):
    a, b = register.add_stage(identity, x, outputs_count=2)
    return a


@register.register_method(output_names=["y"])
def unsupported_output(x):
    return register.add_stage(bad_output, x, outputs_count=1)


@register.register_method(output_names=["y", "size"])
def double(x):
    return register.add_stage(double_batch_sizes, x, outputs_count=2, batch_size=2)


@register.register_method(output_names=["y"])
def double_all(x):
    return register.add_stage(double_batch, x, outputs_count=1, batch_size=0)
"""

BATCH_CONFIG = """
from mindserve.server import register

fixed = register.declare_model(model_file="probe_fixed4.onnx", model_format="ONNX", with_batch_dim=True)
dynamic = register.declare_model(model_file="probe_dynamic.onnx", model_format="ONNX", with_batch_dim=True)
add = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=True)


@register.register_method(output_names=["y", "n"])
def probe_fixed(x):
    return register.add_stage(fixed, x, outputs_count=2)


@register.register_method(output_names=["y", "n"])
def probe_dynamic(x):
    return register.add_stage(dynamic, x, outputs_count=2)


@register.register_method(output_names=["y"])
def add_batched(x1, x2):
    return register.add_stage(add, x1, x2, outputs_count=1)


def call_one(x1, x2):
    return add.call(x1, x2)


def call_many(x1, x2):
    outs = add.call([(x1, x2), (x1, x1), (x2, x2)])
    return outs[0][0], outs[1][0], outs[2][0]


@register.register_method(output_names=["y"])
def add_by_call(x1, x2):
    return register.add_stage(call_one, x1, x2, outputs_count=1)


@register.register_method(output_names=["a", "b", "c"])
def add_by_call_many(x1, x2):
    return register.add_stage(call_many, x1, x2, outputs_count=3)
"""

VERSIONED_CONFIG = """
from mindserve.server import register

model = register.declare_model(model_file="offset.onnx", model_format="ONNX", with_batch_dim=True)


@register.register_method(output_names=["y"])
def predict(x):
    return register.add_stage(model, x, outputs_count=1)
"""


def write(root: str, name: str, config: str) -> str:
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "servable_config.py"), "w") as f:
        f.write(textwrap.dedent(config))
    return path


def make_all(root: str) -> str:
    """echo (Python stages only), batch (models with fixed and variable batch dims), versioned (versions 1 and 2,
    y = x + 1 and y = x + 2)."""
    write(root, "echo", ECHO_CONFIG)
    batch = write(root, "batch", BATCH_CONFIG)
    os.makedirs(os.path.join(batch, "1"), exist_ok=True)
    model_files.batch_probe_model(os.path.join(batch, "1", "probe_fixed4.onnx"), batch_dim=4)
    model_files.batch_probe_model(os.path.join(batch, "1", "probe_dynamic.onnx"))
    model_files.add_model(os.path.join(batch, "1", "add.onnx"))
    versioned = write(root, "versioned", VERSIONED_CONFIG)
    for version in (1, 2):
        os.makedirs(os.path.join(versioned, str(version)), exist_ok=True)
        model_files.offset_model(os.path.join(versioned, str(version), "offset.onnx"), float(version))
    return root


PROBE_CONFIG = """
import os
import time

import numpy as np
from mindserve.server import register


def kind(x):
    return type(x).__name__


def total(x):
    return x.sum()


def fail_negative(x):
    if x.min() < 0:
        raise ValueError("negative value " + str(x.min()))
    return x


def ragged(x):
    return np.zeros(int(x.reshape(-1)[0]), np.float32)


@register.register_method(output_names=["kind"])
def value_kind(x):
    return register.add_stage(kind, x, outputs_count=1)


@register.register_method(output_names=["total"])
def sum_all(x):
    return register.add_stage(total, x, outputs_count=1)


@register.register_method(output_names=["y"])
def positive(x):
    return register.add_stage(fail_negative, x, outputs_count=1)


@register.register_method(output_names=["y"])
def zeros_of_length(x):
    return register.add_stage(ragged, x, outputs_count=1)


def wait_while_exists(path):
    open(path + b".started", "wb").close()  # tells the test that this request is in the queue
    deadline = time.monotonic() + 120
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return path


@register.register_method(output_names=["path"])
def wait_for_file(path):
    return register.add_stage(wait_while_exists, path, outputs_count=1)
"""

# Blocks at import while the file named by $MINDSERVE_TEST_HOLD_FILE exists (at most 120 s): a restarted worker
# then stays down until the test removes the file, so "no live worker" can be observed without racing the restart.
HOLD_CONFIG = """
import os
import time
from mindserve.server import register

_hold = os.environ.get("MINDSERVE_TEST_HOLD_FILE")
_deadline = time.monotonic() + 120
while _hold and os.path.exists(_hold) and time.monotonic() < _deadline:
    time.sleep(0.02)


def identity(x):
    return x


@register.register_method(output_names=["y"])
def echo(x):
    return register.add_stage(identity, x, outputs_count=1)
"""


def make_probe_and_hold(root: str) -> str:
    """probe (Python stages that show what reaches them, fail per instance, answer ragged shapes, or wait while a
    file exists) and hold (one method, echo; its worker's start waits for a hold file to go)."""
    write(root, "probe", PROBE_CONFIG)
    write(root, "hold", HOLD_CONFIG)
    return root


# Batching across requests: every batch stage below (batch_size=0) gets all the instances its worker runs
# together and answers, per instance, its input unchanged, the number of instances it was given ("batch") and
# the worker's pid.
RECORD_CONFIG = """
import os
import numpy as np
from mindserve.server import register


def record_batch(instances):
    size = np.array([len(instances)], np.int64)
    pid = np.array([os.getpid()], np.int64)
    return [(x, size, pid) for (x,) in instances]


@register.register_method(output_names=["y", "batch", "pid"])
def record(x):
    return register.add_stage(record_batch, x, outputs_count=3, batch_size=0)
"""

# probe_dynamic.onnx: y = x * 2, n = the rows of the run ([N, 2] float32 in, see model_files.batch_probe_model),
# declared with a batch dim; probe_whole.onnx: the same graph declared without one (an instance is the whole
# [rows, 2] input). The batch stage after the model records how the instances were run together.
MODEL_RECORD_CONFIG = """
import os
import numpy as np
from mindserve.server import register

dynamic = register.declare_model(model_file="probe_dynamic.onnx", model_format="ONNX", with_batch_dim=True)
whole = register.declare_model(model_file="probe_whole.onnx", model_format="ONNX", with_batch_dim=False)


def record_batch(instances):
    size = np.array([len(instances)], np.int64)
    pid = np.array([os.getpid()], np.int64)
    return [(y, n, size, pid) for (y, n) in instances]


@register.register_method(output_names=["y", "n", "batch", "pid"])
def dynamic_batch(x):
    y, n = register.add_stage(dynamic, x, outputs_count=2)
    return register.add_stage(record_batch, y, n, outputs_count=4, batch_size=0)


@register.register_method(output_names=["y", "n", "batch", "pid"])
def whole_instance(x):
    y, n = register.add_stage(whole, x, outputs_count=2)
    return register.add_stage(record_batch, y, n, outputs_count=4, batch_size=0)
"""

# probe_fixed2.onnx: the probe model with a fixed batch size of 2.
FIXED_RECORD_CONFIG = """
import os
import numpy as np
from mindserve.server import register

fixed = register.declare_model(model_file="probe_fixed2.onnx", model_format="ONNX", with_batch_dim=True)


def record_batch(instances):
    size = np.array([len(instances)], np.int64)
    pid = np.array([os.getpid()], np.int64)
    return [(y, n, size, pid) for (y, n) in instances]


@register.register_method(output_names=["y", "n", "batch", "pid"])
def fixed_batch(x):
    y, n = register.add_stage(fixed, x, outputs_count=2)
    return register.add_stage(record_batch, y, n, outputs_count=4, batch_size=0)
"""


def make_batching(root: str) -> str:
    """recorder (Python only: method record), modelrec (version 1: dynamic_batch and whole_instance) and
    fixedrec (version 1: fixed_batch), each answering y, the batch size its batch stage saw and the pid."""
    write(root, "recorder", RECORD_CONFIG)
    modelrec = write(root, "modelrec", MODEL_RECORD_CONFIG)
    os.makedirs(os.path.join(modelrec, "1"), exist_ok=True)
    model_files.batch_probe_model(os.path.join(modelrec, "1", "probe_dynamic.onnx"))
    model_files.batch_probe_model(os.path.join(modelrec, "1", "probe_whole.onnx"))
    fixedrec = write(root, "fixedrec", FIXED_RECORD_CONFIG)
    os.makedirs(os.path.join(fixedrec, "1"), exist_ok=True)
    model_files.batch_probe_model(os.path.join(fixedrec, "1", "probe_fixed2.onnx"), batch_dim=2)
    return root


# Method hold(x) -> y (= x), pid. For x[0] = K > 0 its stage writes its pid to the file started-K beside
# servable_config.py (atomically) and waits until the test creates release-K there (at most 60 s); other values
# pass at once. Like HOLD_CONFIG, the import waits while $MINDSERVE_TEST_HOLD_FILE exists (at most 120 s), so a
# restarted worker stays down until the test lets it start.
BLOCK_CONFIG = """
import os
import time
import numpy as np
from mindserve.server import register

_here = os.path.dirname(os.path.abspath(__file__))
_hold = os.environ.get("MINDSERVE_TEST_HOLD_FILE")
_deadline = time.monotonic() + 120
while _hold and os.path.exists(_hold) and time.monotonic() < _deadline:
    time.sleep(0.02)


def wait_for_release(x):
    key = int(np.asarray(x).reshape(-1)[0])
    if key > 0:
        started = os.path.join(_here, "started-%d" % key)
        temp = "%s.%d.tmp" % (started, os.getpid())
        with open(temp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(temp, started)
        release = os.path.join(_here, "release-%d" % key)
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.01)
    return x, np.array([os.getpid()], np.int64)


@register.register_method(output_names=["y", "pid"])
def hold(x):
    return register.add_stage(wait_for_release, x, outputs_count=2)
"""


def make_blocker(root: str, name: str = "blocker", version: int = 1) -> str:
    """The servable ``name`` (no model; with an empty version folder ``version``, none for 0) with the method
    hold of BLOCK_CONFIG; returns its folder, where the started-K and release-K files go."""
    path = write(root, name, BLOCK_CONFIG)
    if version:
        os.makedirs(os.path.join(path, str(version)), exist_ok=True)
    return path


# num_parallel_workers (tests/workers/test_parallel_workers.py): Python stages around a model stage (offset.onnx,
# y = x + version). The pre stage of x[0] = K > 0 writes its pid and start time to stage-K in the folder named by
# $MINDSERVE_TEST_STAGE_DIR, then waits (at most 20 s) until release-K exists there, or, when x[1] = -1, until
# `rendezvous` other stages have started too (proving that they run at the same time), and writes its end time.
# Every Python stage reports its pid and whether ONNX Runtime is imported in its process (a model is loaded).
PARALLEL_CONFIG = """
import os
import sys
import time

import numpy as np
from mindserve.server import register

model = register.declare_model(model_file="offset.onnx", model_format="ONNX", with_batch_dim=True)
_dir = os.environ["MINDSERVE_TEST_STAGE_DIR"]
_rendezvous = int(os.environ.get("MINDSERVE_TEST_RENDEZVOUS", "2"))


def _stage_files():
    return [n for n in os.listdir(_dir) if n.startswith("stage-")]


def pre(x):
    key = int(x[0])
    if key > 0:
        began = time.time()
        with open(os.path.join(_dir, f"stage-{key}"), "w") as f:
            f.write(f"{os.getpid()} {began!r}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if x[1] == -1 and len(_stage_files()) >= _rendezvous:
                break
            if x[1] != -1 and os.path.exists(os.path.join(_dir, f"release-{key}")):
                break
            time.sleep(0.01)
        with open(os.path.join(_dir, f"stage-{key}"), "a") as f:
            f.write(f" {time.time()!r}")
    loaded = np.array(["onnxruntime" in sys.modules], np.bool_)
    return x.astype(np.float32), np.array([os.getpid()], np.int64), loaded


def post(y):
    return y * 2, np.array([os.getpid()], np.int64)


def check(x):
    if x[0] < 0:
        raise ValueError(f"negative key {x[0]}")
    if x[0] == 99:
        return {"not": "a tensor"}
    return x.astype(np.float32)


def last(y):
    if y[0] > 50:
        raise ValueError(f"too large {y[0]}")
    return y - 1


def label(y):
    return "seen " + str(int(y[0])), b"raw"


def call_model(x):
    return model.call(x.astype(np.float32))


@register.register_method(output_names=["y", "pre_pid", "post_pid", "pre_loaded"])
def pipeline(x):
    x, pre_pid, loaded = register.add_stage(pre, x, outputs_count=3)
    y = register.add_stage(model, x, outputs_count=1)
    y, post_pid = register.add_stage(post, y, outputs_count=2)
    return y, pre_pid, post_pid, loaded


@register.register_method(output_names=["y", "text", "raw", "x"])
def steps(x):
    checked = register.add_stage(check, x, outputs_count=1)
    y = register.add_stage(model, checked, outputs_count=1)
    text, raw = register.add_stage(label, y, outputs_count=2)
    z = register.add_stage(last, y, outputs_count=1)
    return z, text, raw, x


@register.register_method(output_names=["y", "pid", "loaded"])
def python_only(x):
    return register.add_stage(pre, x, outputs_count=3)


@register.register_method(output_names=["y"])
def by_call(x):
    return register.add_stage(call_model, x, outputs_count=1)


@register.register_method(output_names=["y"])
def model_after(x):
    register.add_stage(check, x, outputs_count=1)
    return register.add_stage(model, x, outputs_count=1)


@register.register_method(output_names=["y", "model_y"])
def model_then_post(x):
    y = register.add_stage(model, x, outputs_count=1)
    doubled, _ = register.add_stage(post, y, outputs_count=2)
    return doubled, y
"""


def make_parallel(root: str, versions=(1,), offset: float = 1.0) -> str:
    """The parallel servable (PARALLEL_CONFIG) with offset.onnx (y = x + offset) in each version folder; its
    folder."""
    path = write(root, "parallel", PARALLEL_CONFIG)
    for version in versions:
        os.makedirs(os.path.join(path, str(version)), exist_ok=True)
        model_files.offset_model(os.path.join(path, str(version), "offset.onnx"), offset)
    return path
