"""Per-model options (declare_model(..., options=...)), ONNX Runtime's device choice, and models of several
subgraphs (declare_model with a list of files, Model.call(..., subgraph=i)) served from ONNX files."""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest

from mindserve import _backends
from mindserve._backends import mindir, onnx_runtime
from mindserve._backends.options import check_options
from mindserve._servable import definition
from mindserve._workers.loader import load_servable
from mindserve.client import Client
from support import model_files, servables
from support.processes import free_port, start_server
from support.starts import assert_clean_failure, run_start, start_call

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)


@pytest.fixture
def svc():
    """A clean registry for servable "svc"."""
    servable = definition.begin_servable("svc")
    yield servable
    definition.begin_servable("")


def raises(text: str):
    return pytest.raises(RuntimeError, match="^" + re.escape(text) + "$")


# ============================================================================================================
# declaring options
# ============================================================================================================


def test_defaults_per_format(svc):
    onnx = definition.declare_model("a.onnx", "ONNX")
    mindir_model = definition.declare_model("a.mindir", "MindIR")
    assert onnx.options == {"thread_num": 1, "inter_op_num_threads": 1, "graph_optimization_level": "all"}
    assert mindir_model.options == {"thread_num": 1, "precision_mode": "origin"}
    assert mindir_model.model_format == "mindir"


def test_given_options_are_kept(svc):
    onnx = definition.declare_model("a.onnx", "onnx", options={"thread_num": 4, "graph_optimization_level": "basic"})
    assert onnx.options == {"thread_num": 4, "inter_op_num_threads": 1, "graph_optimization_level": "basic"}
    model = definition.declare_model("a.mindir", "MINDIR", options={"precision_mode": "allow_fp32_to_fp16"})
    assert model.options == {"thread_num": 1, "precision_mode": "allow_fp32_to_fp16"}


ONNX_OPTIONS = "thread_num, inter_op_num_threads, graph_optimization_level"
MINDIR_OPTIONS = "thread_num, precision_mode"


@pytest.mark.parametrize(
    "fmt, options, text",
    [
        (
            "ONNX",
            {"thread_nums": 2},
            f"option 'thread_nums' is not supported for model format ONNX, supported options: {ONNX_OPTIONS}",
        ),
        (
            "ONNX",
            {"precision_mode": "origin"},
            f"option 'precision_mode' is not supported for model format ONNX, supported options: {ONNX_OPTIONS}",
        ),
        (
            "MindIR",
            {"graph_optimization_level": "all"},
            f"option 'graph_optimization_level' is not supported for model format MindIR, supported options: "
            f"{MINDIR_OPTIONS}",
        ),
        ("MindIR", {1: 2}, f"option 1 is not supported for model format MindIR, supported options: {MINDIR_OPTIONS}"),
        ("ONNX", {"thread_num": 0}, "option 'thread_num' should be an int >= 1, but given 0"),
        ("MindIR", {"thread_num": "2"}, "option 'thread_num' should be an int >= 1, but given '2'"),
        ("ONNX", {"thread_num": True}, "option 'thread_num' should be an int >= 1, but given True"),
        ("ONNX", {"inter_op_num_threads": 1.0}, "option 'inter_op_num_threads' should be an int >= 1, but given 1.0"),
        (
            "ONNX",
            {"graph_optimization_level": "max"},
            "option 'graph_optimization_level' should be one of 'disable_all', 'basic', 'extended', 'all', but given "
            "'max'",
        ),
        (
            "MindIR",
            {"precision_mode": "fp16"},
            "option 'precision_mode' should be one of 'origin', 'force_fp16', 'allow_fp32_to_fp16', "
            "'allow_mix_precision', "
            "'must_keep_origin_dtype', 'force_fp32', 'allow_fp32_to_bf16', 'allow_mix_precision_fp16', "
            "'allow_mix_precision_bf16', but given 'fp16'",
        ),
    ],
)
def test_bad_options_name_the_option_and_the_model(svc, fmt, options, text):
    with raises(f"Declare model a.model;b.model failed, {text}"):
        definition.declare_model(["a.model", "b.model"], fmt, options=options)
    assert svc.models == []
    definition.declare_model(["a.model", "b.model"], fmt)  # the failed declaration used no file up


def test_bad_option_fails_start(tmp_path):
    root = str(tmp_path / "servables")
    config = ONNX_SUBGRAPH_CONFIG.replace(
        'options={"thread_num": 2, "graph_optimization_level": "basic"}', 'options={"thread_num": -1}'
    )
    path = servables.write(root, "svc", config)
    with open(os.path.join(path, "servable_config.py")) as f:
        line = next(n for n, text in enumerate(f, start=1) if "declare_model" in text)
    outcome = run_start(tmp_path, start_call(root))
    assert outcome.error == (
        "import svc.servable_config failed, Declare model add.onnx;offset.onnx failed, option "
        f"'thread_num' should be an int >= 1, but given -1 (servable_config.py, line {line})"
    )
    assert_clean_failure(outcome)


# ============================================================================================================
# backends: options applied, device choice, a missing package
# ============================================================================================================


def test_onnx_session_options_applied(tmp_path):
    path = str(tmp_path / "add.onnx")
    model_files.add_model(path)
    session = _backends.load_model("onnx", path, None, 0, check_options("onnx", {}))
    assert isinstance(session, onnx_runtime.OnnxSession)
    applied = session.session.get_session_options()
    assert (applied.intra_op_num_threads, applied.inter_op_num_threads) == (1, 1)
    assert applied.graph_optimization_level.name == "ORT_ENABLE_ALL"
    options = check_options(
        "onnx", {"thread_num": 3, "inter_op_num_threads": 2, "graph_optimization_level": "disable_all"}
    )
    session = _backends.load_model("onnx", path, "CPU", 0, options)
    assert isinstance(session, onnx_runtime.OnnxSession)
    applied = session.session.get_session_options()
    assert (applied.intra_op_num_threads, applied.inter_op_num_threads) == (3, 2)
    assert applied.graph_optimization_level.name == "ORT_DISABLE_ALL"
    assert session.session.get_providers() == ["CPUExecutionProvider"]
    out = session.run([np.ones((2, 2), np.float32), np.full((2, 2), 2.5, np.float32)])
    np.testing.assert_array_equal(out[0], np.full((2, 2), 3.5, np.float32))


@pytest.mark.parametrize("level, name", [("basic", "ORT_ENABLE_BASIC"), ("extended", "ORT_ENABLE_EXTENDED")])
def test_onnx_optimization_levels(tmp_path, level, name):
    path = str(tmp_path / "add.onnx")
    model_files.add_model(path)
    session = _backends.load_model("onnx", path, None, 0, check_options("onnx", {"graph_optimization_level": level}))
    assert isinstance(session, onnx_runtime.OnnxSession)
    assert session.session.get_session_options().graph_optimization_level.name == name


CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize(
    "device_type, available, providers",
    [
        (None, CPU_ONLY, ["CPUExecutionProvider"]),
        ("cpu", CPU_ONLY, ["CPUExecutionProvider"]),
        ("GPU", ["CUDAExecutionProvider", "CPUExecutionProvider"], [("CUDAExecutionProvider", {"device_id": 3})]),
        ("ascend", ["CANNExecutionProvider", "CPUExecutionProvider"], [("CANNExecutionProvider", {"device_id": 3})]),
    ],
)
def test_onnx_provider_for_device(device_type, available, providers):
    assert onnx_runtime.providers_for(device_type, 3, available) == providers


@pytest.mark.parametrize(
    "device_type, text",
    [
        (
            "gpu",
            "device type gpu needs ONNX Runtime's CUDAExecutionProvider, which this onnxruntime build does not have "
            "(it has AzureExecutionProvider, CPUExecutionProvider); install onnxruntime-gpu",
        ),
        (
            "ascend",
            "device type ascend needs ONNX Runtime's CANNExecutionProvider, which this onnxruntime build does not "
            "have (it has AzureExecutionProvider, CPUExecutionProvider); install onnxruntime-cann",
        ),
        ("tpu", "Unsupported device type 'tpu', only support 'Ascend', 'GPU', 'CPU' and None, case ignored"),
    ],
)
def test_onnx_provider_missing(device_type, text):
    with raises(text):
        onnx_runtime.providers_for(device_type, 0, CPU_ONLY)


def test_onnx_gpu_refused_by_this_build(tmp_path):
    """This machine's onnxruntime has no CUDA provider: loading for a GPU fails with the provider text."""
    import onnxruntime

    path = str(tmp_path / "add.onnx")
    model_files.add_model(path)
    available = onnxruntime.get_available_providers()
    assert "CUDAExecutionProvider" not in available
    with raises(
        f"device type gpu needs ONNX Runtime's CUDAExecutionProvider, which this onnxruntime build does not "
        f"have (it has {', '.join(available)}); install onnxruntime-gpu"
    ):
        _backends.load_model("onnx", path, "gpu", 0, check_options("onnx", {}))


def test_mindspore_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "mindspore", None)  # makes `import mindspore` raise ImportError
    with raises(
        "model format MindIR needs MindSpore, which is not installed: pip install 'mindserve[mindir]' (or mindspore)"
    ):
        _backends.load_model("mindir", "/nonexistent/net.mindir", None, 0, check_options("mindir", {}))


def test_mindir_file_name_checked(monkeypatch):
    monkeypatch.setattr(mindir, "_import_mindspore", lambda: None)  # the name is checked before MindSpore runs
    with raises("a MindIR model file must be named *.mindir (mindspore.load takes no other), but given 'net.onnx'"):
        _backends.load_model("mindir", "/models/net.onnx", None, 0, check_options("mindir", {}))


# ============================================================================================================
# subgraphs
# ============================================================================================================


def test_subgraph_argument_checks(svc):
    model = definition.declare_model(["a.onnx", "b.onnx"], "ONNX")
    with raises(
        "Model(a.onnx;b.onnx).call() failed: The model does not have subgraph of index 2, the subgraph count "
        "of the model is 2"
    ):
        model.call(1, subgraph=2)
    with raises("Model(a.onnx;b.onnx).call() failed: parameter 'subgraph' should be >= 0, but actually -1"):
        model.call(1, subgraph=-1)
    with raises("Model(a.onnx;b.onnx).call() failed: parameter 'subgraph' should be int, but actually <class 'str'>"):
        model.call(1, subgraph="1")  # type: ignore[arg-type]  # on purpose
    with raises("Model(a.onnx;b.onnx).call() failed: parameter 'subgraph' should be int, but actually <class 'bool'>"):
        model.call(1, subgraph=True)
    with raises(
        "Model(a.onnx;b.onnx).call() failed: the model is not loaded, Model.call can only be used in a stage "
        "run by a serving worker"
    ):
        model.call(1, subgraph=1)


# Subgraph 0: y = x1 + x2 on float32 [2, 2]; subgraph 1: y = x + 1 on float32 [N, 2] (another input count).
ONNX_SUBGRAPH_CONFIG = """
from mindserve.server import register

model = register.declare_model(model_file=["add.onnx", "offset.onnx"], model_format="ONNX", with_batch_dim=False,
                               options={"thread_num": 2, "graph_optimization_level": "basic"})


@register.register_method(output_names=["y"])
def add(x1, x2):
    return register.add_stage(model, x1, x2, outputs_count=1)


def offset(x):
    return model.call(x, subgraph=1)


def offset_many(x):
    return [out[0] for out in model.call([(x,), (x * 2,)], subgraph=1)]


def sum_then_offset(x1, x2):
    return model.call(model.call(x1, x2), subgraph=1)


def bad_index(x):
    return model.call(x, subgraph=5)


def bad_count(x):
    return model.call(x, x, subgraph=1)


@register.register_method(output_names=["y"])
def plus_one(x):
    return register.add_stage(offset, x, outputs_count=1)


@register.register_method(output_names=["a", "b"])
def plus_one_many(x):
    return register.add_stage(offset_many, x, outputs_count=2)


@register.register_method(output_names=["y"])
def add_plus_one(x1, x2):
    return register.add_stage(sum_then_offset, x1, x2, outputs_count=1)


@register.register_method(output_names=["y"])
def subgraph_five(x):
    return register.add_stage(bad_index, x, outputs_count=1)


@register.register_method(output_names=["y"])
def subgraph_one_with_two_inputs(x):
    return register.add_stage(bad_count, x, outputs_count=1)
"""


@pytest.fixture(scope="module")
def subgraph_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("subgraph_servables"))
    path = servables.write(root, "svc", ONNX_SUBGRAPH_CONFIG)
    os.makedirs(os.path.join(path, "1"))
    model_files.add_model(os.path.join(path, "1", "add.onnx"), batch_dim=2)
    model_files.offset_model(os.path.join(path, "1", "offset.onnx"), 1.0)
    return root


@pytest.fixture(scope="module")
def address(subgraph_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("subgraph_server")
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp,
        f"""
        server.start_servables(server.ServableStartConfig({subgraph_root!r}, "svc", device_ids=(0,)))
        server.start_grpc_server({address!r})
    """,
        address,
    )
    yield address
    server.stop()


def test_declared_options_reach_every_subgraph_session(subgraph_root):
    """The worker's loader gives each subgraph's session the model's options (loaded here, in process)."""
    executor = load_servable(subgraph_root, "svc", 1, None, 0)
    try:
        (runner,) = executor.runners.values()
        assert len(runner.sessions) == 2
        for session in runner.sessions:
            assert isinstance(session, onnx_runtime.OnnxSession)
            applied = session.session.get_session_options()
            assert applied.intra_op_num_threads == 2
            assert applied.graph_optimization_level.name == "ORT_ENABLE_BASIC"
    finally:  # what load_servable left in this process: the registry, the config's modules, the import path
        definition.begin_servable("")
        sys.modules.pop("svc.servable_config", None)
        sys.modules.pop("svc", None)
        if os.path.abspath(subgraph_root) in sys.path:
            sys.path.remove(os.path.abspath(subgraph_root))


X1 = np.array([[1.5, -2.0], [3.0, 0.25]], np.float32)
X2 = np.array([[2.0, 4.0], [-1.0, 8.0]], np.float32)


def test_add_stage_runs_subgraph_zero(address):
    result = Client(address, "svc", "add").infer([{"x1": X1, "x2": X2}])
    np.testing.assert_array_equal(result[0]["y"], X1 + X2)


def test_model_call_runs_subgraph_one(address):
    result = Client(address, "svc", "plus_one").infer([{"x": X1}, {"x": X2[:1]}])
    np.testing.assert_array_equal(result[0]["y"], X1 + 1)
    np.testing.assert_array_equal(result[1]["y"], X2[:1] + 1)
    result = Client(address, "svc", "plus_one_many").infer([{"x": X1}])
    np.testing.assert_array_equal(result[0]["a"], X1 + 1)
    np.testing.assert_array_equal(result[0]["b"], X1 * 2 + 1)


def test_both_subgraphs_in_one_stage(address):
    result = Client(address, "svc", "add_plus_one").infer([{"x1": X1, "x2": X2}])
    np.testing.assert_array_equal(result[0]["y"], X1 + X2 + 1)


def test_subgraph_errors(address):
    result = Client(address, "svc", "subgraph_five").infer({"x": X1})
    assert result == {
        "error": "Call Function 'svc.bad_index' Failed, method: 'subgraph_five', stage index(begin with "
        "1): 1, error msg: Model(add.onnx;offset.onnx).call() failed: The model does not have "
        "subgraph of index 5, the subgraph count of the model is 2"
    }
    result = Client(address, "svc", "subgraph_one_with_two_inputs").infer({"x": X1})
    assert result == {
        "error": "Call Function 'svc.bad_count' Failed, method: 'subgraph_one_with_two_inputs', stage "
        "index(begin with 1): 1, error msg: Model(add.onnx;offset.onnx).call() failed: The "
        "inputs count 2 of instance 0 is not equal to the inputs count 1 of the model"
    }
