"""Writes the servable directories the tests serve (servable_config.py files and ONNX models)."""
from __future__ import annotations

import os
import textwrap

import model_files

ECHO_CONFIG = '''
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
'''

BATCH_CONFIG = '''
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
'''

VERSIONED_CONFIG = '''
from mindserve.server import register

model = register.declare_model(model_file="offset.onnx", model_format="ONNX", with_batch_dim=True)


@register.register_method(output_names=["y"])
def predict(x):
    return register.add_stage(model, x, outputs_count=1)
'''


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
