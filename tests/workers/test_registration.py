"""Registration-time errors (servable_config.py declarations, checked in this process) and start-time errors
(``server.start_servables``, each run in its own process: the master is never started inside pytest)."""

from __future__ import annotations

import os
import re
import textwrap
from typing import Optional

import pytest

from mindserve._servable import definition
from mindserve._servable.definition import Placeholder
from support import model_files, servables
from support.processes import free_port
from support.starts import assert_clean_failure, run_start, start_call

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

# ============================================================================================================
# registration: mindserve._servable.definition, in process
# ============================================================================================================


@pytest.fixture
def svc():
    """A clean registry for servable "svc"."""
    servable = definition.begin_servable("svc")
    yield servable
    definition.begin_servable("")


def raises(text: str):
    """pytest.raises(RuntimeError) for exactly ``text``."""
    return pytest.raises(RuntimeError, match="^" + re.escape(text) + "$")


def f1(a):
    return a


def f2(a, b):
    return a, b


def test_valid_registration_is_recorded(svc):
    model = definition.declare_model("a.onnx", "ONNX", with_batch_dim=False)

    @definition.register_method(output_names=["y", "z"])
    def m(x1, x2):
        outputs = definition.add_stage(f2, x1, x2, outputs_count=2)
        assert isinstance(outputs, tuple)  # (two outputs: a tuple of placeholders)
        a, b = outputs
        y = definition.add_stage(model, a, b, outputs_count=1)
        return y, a

    @definition.register_method(output_names="y")
    def single(x):
        return x

    assert m.__name__ == "m"  # the decorator gives the function back
    method = svc.methods["m"]
    assert method.input_names == ["x1", "x2"] and method.output_names == ["y", "z"]
    assert [s.tag for s in method.stages] == ["Function 'svc.f2'", "Model 'a.onnx'"]
    assert [(p.stage, p.index) for p in method.outputs] == [(2, 0), (1, 0)]
    assert [(p.stage, p.index) for p in method.stages[1].args] == [(1, 0), (1, 1)]
    assert (model.inputs_count, model.outputs_count) == (2, 1)
    assert svc.methods["single"].output_names == ["y"]
    assert [(p.stage, p.index) for p in svc.methods["single"].outputs] == [(0, 0)]
    assert svc.models == [model] and model.model_format == "onnx" and model.with_batch_dim is False


def test_stage_tag(svc):
    @definition.register_method(output_names=["y"])
    def m(x):
        return definition.add_stage(f1, x, outputs_count=1, tag="custom")

    assert svc.methods["m"].stages[0].tag == "Function 'custom'"


@pytest.mark.parametrize(
    "names, text",
    [
        (1, "Parameter 'output_names' should be str or tuple/list of str, but actually <class 'int'>"),
        (None, "Parameter 'output_names' should be str or tuple/list of str, but actually <class 'NoneType'>"),
        (["y", 2], "The item of parameter 'output_names' should be str, but actually <class 'int'>"),
        (["y", ""], "The item of parameter 'output_names' should not be empty str"),
        ("", "The item of parameter 'output_names' should not be empty str"),
        (["y", "z", "y"], "The item value 'y' in parameter 'output_names' should not be repeated"),
    ],
)
def test_output_names_checks(svc, names, text):
    with raises(text):
        definition.register_method(output_names=names)
    assert svc.methods == {}


def test_duplicate_method(svc):
    @definition.register_method(output_names=["y"])
    def m(x):
        return x

    first = svc.methods["m"]
    with raises("Method m has been registered more than once."):

        @definition.register_method(output_names=["y"])
        def m(x):  # noqa: F811
            return x

    assert svc.methods["m"] is first


@pytest.mark.parametrize("kind", ["var_positional", "var_keyword", "keyword_only"])
def test_method_parameter_kinds(svc, kind):
    # (three variants of one function m, as the error texts name it: hence the ignores)
    if kind == "var_positional":

        def m(x, *args):
            return x

        text = "'m' input args cannot be VAR_POSITIONAL !"
    elif kind == "var_keyword":

        def m(x, **kwargs):  # type: ignore[misc]
            return x

        text = "'m' input kwargs cannot be VAR_KEYWORD !"
    else:

        def m(x, *, y):  # type: ignore[misc]
            return x

        text = "'m' input y cannot be KEYWORD_ONLY !"
    with raises(text):
        definition.register_method(output_names=["y"])(m)
    assert "m" not in svc.methods


NOT_PLACEHOLDER_ARG = (
    "Method 'm': each value of parameter *args is a placeholder for data and must come from the "
    "method inputs or the outputs of add_stage"
)


def test_add_stage_with_non_placeholder_argument(svc):
    with raises(NOT_PLACEHOLDER_ARG):

        @definition.register_method(output_names=["y"])
        def m(x):
            return definition.add_stage(f2, x, 1.0, outputs_count=1)  # type: ignore[arg-type]  # on purpose

    assert "m" not in svc.methods


def test_add_stage_with_placeholder_of_another_method(svc):
    saved = []

    @definition.register_method(output_names=["y"])
    def first(x):
        saved.append(x)
        return x

    assert isinstance(saved[0], Placeholder)
    with raises(NOT_PLACEHOLDER_ARG):

        @definition.register_method(output_names=["y"])
        def m(x):
            return definition.add_stage(f2, x, saved[0], outputs_count=1)


def test_add_stage_outside_a_method(svc):
    with raises("add_stage can only be called inside a function decorated by register_method"):
        definition.add_stage(f1, Placeholder(None, 0, 0), outputs_count=1)  # type: ignore[arg-type]  # no method


def test_add_stage_outside_a_method_after_a_failed_registration(svc):
    with pytest.raises(ZeroDivisionError):

        @definition.register_method(output_names=["y"])
        def m(x):
            return 1 / 0

    with raises("add_stage can only be called inside a function decorated by register_method"):
        definition.add_stage(f1, Placeholder(None, 0, 0), outputs_count=1)  # type: ignore[arg-type]  # no method
    assert svc.methods == {}


@pytest.mark.parametrize("count", [0, -1, True, 1.0, "1", None])
def test_outputs_count_checks(svc, count):
    with raises(f"Method 'm': parameter 'outputs_count' should be an int >= 1, but actually {count!r}"):

        @definition.register_method(output_names=["y"])
        def m(x):
            return definition.add_stage(f1, x, outputs_count=count)


@pytest.mark.parametrize("batch_size", [-1, -8, True, 2.0, "4"])
def test_batch_size_checks(svc, batch_size):
    with raises(f"Method 'm': parameter 'batch_size' should be None or an int >= 0, but actually {batch_size!r}"):

        @definition.register_method(output_names=["y"])
        def m(x):
            return definition.add_stage(f1, x, outputs_count=1, batch_size=batch_size)


def test_batch_size_zero_and_n_are_accepted(svc):
    @definition.register_method(output_names=["y", "z"])
    def m(x1, x2):
        y = definition.add_stage(f1, x1, x2, outputs_count=1, batch_size=0)  # batch functions take one list
        z = definition.add_stage(f1, x1, outputs_count=1, batch_size=3)
        return y, z

    assert [s.batch_size for s in svc.methods["m"].stages] == [0, 3]


def test_function_argument_count_mismatch(svc):
    with raises("function f input args count 1 not match the count 2 registered in method 'm'"):

        @definition.register_method(output_names=["y"])
        def m(x1, x2):
            def f(a):
                return a

            return definition.add_stage(f, x1, x2, outputs_count=1)

    with raises("function f2 input args count 2 not match the count 1 registered in method 'm'"):

        @definition.register_method(output_names=["y"])
        def m(x1, x2):  # noqa: F811
            return definition.add_stage(f2, x1, outputs_count=1)

    assert svc.methods == {}


def test_function_with_var_args_takes_any_count(svc):
    def f(*values):
        return values[0]

    @definition.register_method(output_names=["y"])
    def m(x1, x2, x3):
        return definition.add_stage(f, x1, x2, x3, outputs_count=1)

    assert len(svc.methods["m"].stages[0].args) == 3


def test_returned_count_mismatch(svc):
    with raises("Method return output size 1 not match registered 2, method 'm'"):

        @definition.register_method(output_names=["y", "z"])
        def m(x):
            return definition.add_stage(f1, x, outputs_count=1)

    with raises("Method return output size 2 not match registered 1, method 'm'"):

        @definition.register_method(output_names=["y"])
        def m(x1, x2):  # noqa: F811
            return definition.add_stage(f2, x1, x2, outputs_count=2)

    assert svc.methods == {}


@pytest.mark.parametrize("returned", ["none", "number", "mixed", "list"])
def test_returning_a_non_placeholder(svc, returned):
    with raises(
        "Method 'm': each value returned is a placeholder for data and must come from the method inputs or "
        "the outputs of add_stage"
    ):

        @definition.register_method(output_names=["y", "z"])
        def m(x):
            if returned == "none":
                return None
            if returned == "number":
                return 1
            if returned == "mixed":
                return x, 2
            return [x, x]

    assert svc.methods == {}


@pytest.mark.parametrize("fmt", ["MindIR_Lite", "OM", "", None, 1])
def test_unsupported_model_format(svc, fmt):
    with raises(f"model format can only be ONNX or MindIR, case ignored, but given {fmt!r}"):
        definition.declare_model("a.onnx", fmt)
    assert svc.models == []
    definition.declare_model("a.onnx", "onnx")  # the failed declaration used nothing up


def test_model_format_case_ignored(svc):
    assert definition.declare_model("a.onnx", "Onnx").model_format == "onnx"


def test_same_model_file_declared_twice(svc):
    definition.declare_model("a.onnx", "ONNX")
    with raises("Declare model a.onnx failed, model file 'a.onnx' has already been used"):
        definition.declare_model("a.onnx", "ONNX")
    with raises("Declare model b.onnx;a.onnx failed, model file 'a.onnx' has already been used"):
        definition.declare_model(["b.onnx", "a.onnx"], "ONNX")
    assert len(svc.models) == 1
    model = definition.declare_model(["b.onnx", "c.onnx"], "ONNX")  # b.onnx was not used up by the failure
    assert model.key == "b.onnx;c.onnx" and model.files == ("b.onnx", "c.onnx")


@pytest.mark.parametrize(
    "kwargs, text",
    [
        (dict(model_file=[]), "Declare model failed, model files size cannot be 0"),
        (dict(model_file=1), "Parameter 'model_file' should be str or tuple/list of str, but actually <class 'int'>"),
        (
            dict(model_file=["a.onnx", "a.onnx"]),
            "The item value 'a.onnx' in parameter 'model_file' should not be repeated",
        ),
        (
            dict(model_file="a.onnx", with_batch_dim="yes"),
            "Parameter 'with_batch_dim' should be bool, but actually <class 'str'>",
        ),
        (
            dict(model_file="a.onnx", options=[("a", 1)]),
            "Parameter 'options' should be dict, but actually <class 'list'>",
        ),
    ],
)
def test_declare_model_argument_checks(svc, kwargs, text):
    with raises(text):
        definition.declare_model(model_format="ONNX", **kwargs)
    assert svc.models == []


def test_model_from_another_servable(svc):
    definition.begin_servable("other")
    foreign = definition.declare_model("a.onnx", "ONNX")
    servable = definition.begin_servable("svc")
    definition.declare_model("a.onnx", "ONNX")  # a new registry: the file name is free again
    with raises(
        "Check failed in method 'm', the parameter 'stage' of add_stage must be function or Model returned by "
        "declare_model, and ensure that interface 'declare_model' can take effect when importing "
        "servable_config.py by the serving server"
    ):

        @definition.register_method(output_names=["y"])
        def m(x1, x2):
            return definition.add_stage(foreign, x1, x2, outputs_count=1)

    assert servable.methods == {}


def test_stage_that_is_neither_function_nor_model(svc):
    with raises(
        "Check failed in method 'm', the parameter 'stage' of add_stage must be function or Model returned by "
        "declare_model, now is <class 'str'>"
    ):

        @definition.register_method(output_names=["y"])
        def m(x):
            return definition.add_stage("f1", x, outputs_count=1)  # type: ignore[arg-type]  # on purpose


def test_model_used_with_different_counts(svc):
    model = definition.declare_model("a.onnx", "ONNX")

    @definition.register_method(output_names=["y"])
    def m1(x1, x2):
        return definition.add_stage(model, x1, x2, outputs_count=1)

    with raises("Method 'm2': inputs count 1 of model a.onnx not match the count 2 used by an earlier add_stage"):

        @definition.register_method(output_names=["y"])
        def m2(x):
            return definition.add_stage(model, x, outputs_count=1)

    with raises("Method 'm3': outputs count 2 of model a.onnx not match the count 1 used by an earlier add_stage"):

        @definition.register_method(output_names=["y", "z"])
        def m3(x1, x2):
            return definition.add_stage(model, x1, x2, outputs_count=2)

    assert (model.inputs_count, model.outputs_count) == (2, 1)
    assert list(svc.methods) == ["m1"]


def test_model_call_outside_a_worker(svc):
    model = definition.declare_model("a.onnx", "ONNX")
    with raises(
        "Model(a.onnx).call() failed: the model is not loaded, Model.call can only be used in a stage run by "
        "a serving worker"
    ):
        model.call(1, 2)
    with raises(
        "Model(a.onnx).call() failed: no inputs provided, the inputs can be call(x1, x2) for single instance "
        "or call([[x1, x2], [x1, x2]]) for multi instances."
    ):
        model.call()


# ============================================================================================================
# start-time errors: each start in its own process
# ============================================================================================================

ADD_CONFIG = """
from mindserve.server import register

model = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=False)


@register.register_method(output_names=["y"])
def add(x1, x2):
    return register.add_stage(model, x1, x2, outputs_count=1)
"""

PYTHON_ONLY_CONFIG = """
from mindserve.server import register


def identity(x):
    return x


@register.register_method(output_names=["y"])
def echo(x):
    return register.add_stage(identity, x, outputs_count=1)
"""


def make_servable(root, name: str = "svc", config: str = ADD_CONFIG, versions=(1,), model: Optional[str] = "add.onnx"):
    path = servables.write(str(root), name, config)
    for version in versions:
        os.makedirs(os.path.join(path, str(version)), exist_ok=True)
        if model:
            model_files.add_model(os.path.join(path, str(version), model), batch_dim=2)
    return path


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "servables"
    path.mkdir()
    return str(path)


def test_missing_servable_folder(tmp_path, root):
    outcome = run_start(tmp_path, start_call(root))
    assert outcome.error == (
        f"Check servable config failed, directory '{os.path.join(root, 'svc')}' not exist, "
        f"servable directory '{root}', servable name 'svc'"
    )
    assert_clean_failure(outcome)


def test_missing_servable_config(tmp_path, root):
    path = make_servable(root)
    os.remove(os.path.join(path, "servable_config.py"))
    outcome = run_start(tmp_path, start_call(root))
    assert outcome.error == (
        f"Check servable config failed, file '{os.path.join(path, 'servable_config.py')}' not "
        f"exist, servable directory '{root}', servable name 'svc'"
    )
    assert_clean_failure(outcome)


def test_missing_version_folder(tmp_path, root):
    make_servable(root, versions=(1, 2))
    outcome = run_start(tmp_path, start_call(root, version_number=3))
    assert outcome.error == (
        f"Start servable failed: There is no specified version directory of models, specified "
        f"version number: 3, servable directory: '{root}', servable name: 'svc'"
    )
    assert_clean_failure(outcome)


def _line_of(path: str, marker: str) -> int:
    with open(path) as f:
        return next(n for n, line in enumerate(f, start=1) if marker in line)


def test_servable_config_raises_at_import(tmp_path, root):
    path = make_servable(root, config=ADD_CONFIG + '\nraise ValueError("broken config")\n')
    line = _line_of(os.path.join(path, "servable_config.py"), "broken config")
    outcome = run_start(tmp_path, start_call(root, device_ids=(0, 1)))
    assert outcome.error == f"import svc.servable_config failed, broken config (servable_config.py, line {line})"
    assert_clean_failure(outcome)


def test_servable_config_imports_a_missing_module(tmp_path, root):
    path = make_servable(root, config="import not_a_module_of_mindserve_tests\n" + ADD_CONFIG)
    outcome = run_start(tmp_path, start_call(root))
    assert outcome.error == (
        "import svc.servable_config failed, No module named 'not_a_module_of_mindserve_tests' "
        "(servable_config.py, line 1)"
    )
    assert os.path.exists(os.path.join(path, "servable_config.py"))
    assert_clean_failure(outcome)


def test_registration_error_in_servable_config(tmp_path, root):
    config = (
        ADD_CONFIG
        + """

@register.register_method(output_names=["y"])
def add(x1, x2):
    return register.add_stage(model, x1, x2, outputs_count=1)
"""
    )
    make_servable(root, config=config)
    outcome = run_start(tmp_path, start_call(root))
    assert outcome.error is not None, outcome.output
    assert outcome.error.startswith(
        "import svc.servable_config failed, Method add has been registered more than once. ("
    ), outcome.error
    assert_clean_failure(outcome)


def test_model_file_missing_in_version_folder(tmp_path, root):
    path = make_servable(root, model="other.onnx")
    outcome = run_start(tmp_path, start_call(root))
    assert outcome.error == (
        f"Load model failed, servable directory: '{root}', servable name: 'svc', model file: "
        f"'add.onnx', version number 1, load error details: model file "
        f"'{os.path.join(path, '1', 'add.onnx')}' not exist"
    )
    assert_clean_failure(outcome)


def test_model_file_that_is_not_a_model(tmp_path, root):
    path = make_servable(root)
    with open(os.path.join(path, "1", "add.onnx"), "wb") as f:
        f.write(b"this is not an onnx model")
    outcome = run_start(tmp_path, start_call(root))
    assert outcome.error is not None, outcome.output
    assert outcome.error.startswith(
        f"Load model failed, servable directory: '{root}', servable name: 'svc', model "
        f"file: 'add.onnx', version number 1, load error details: "
    ), outcome.error
    assert_clean_failure(outcome)


def test_models_declared_but_no_version_folder(tmp_path, root):
    make_servable(root, versions=())
    outcome = run_start(tmp_path, start_call(root))
    assert outcome.error == (
        f"There is no valid version directory of models while there are models declared in "
        f"servable_config.py, servable directory: {root}, servable name: svc"
    )
    assert_clean_failure(outcome)


def test_stage_input_count_not_matching_model(tmp_path, root):
    make_servable(root, config=ADD_CONFIG.replace("add_stage(model, x1, x2,", "add_stage(model, x1,"))
    outcome = run_start(tmp_path, start_call(root))
    assert outcome.error == (
        "The inputs count 1 in register_method not equal to the count 2 defined in model, model "
        "info: add.onnx, subgraph: 0"
    )
    assert_clean_failure(outcome)


def test_stage_output_count_not_matching_model(tmp_path, root):
    config = ADD_CONFIG.replace('output_names=["y"]', 'output_names=["y", "z"]').replace(
        "outputs_count=1", "outputs_count=2"
    )
    make_servable(root, config=config)
    outcome = run_start(tmp_path, start_call(root))
    assert outcome.error == (
        "The outputs count 2 in register_method not equal to the count 1 defined in model, "
        "model info: add.onnx, subgraph: 0"
    )
    assert_clean_failure(outcome)


@pytest.mark.parametrize(
    "kwargs, text",
    [
        (dict(device_ids=-1), "The item value '-1' in parameter 'device_ids' should be >= 0"),
        (dict(device_ids=(0, -2)), "The item value '-2' in parameter 'device_ids' should be >= 0"),
        (dict(device_ids=(0, 0)), "The item value in parameter 'device_ids' should not be repeated: [0, 0]"),
        (dict(device_ids=()), "Parameter 'device_ids' should be int or tuple/list of int, but actually ()"),
        (dict(device_ids="0"), "Parameter 'device_ids' should be int or tuple/list of int, but actually '0'"),
        (dict(device_ids=True), "Parameter 'device_ids' should be int or tuple/list of int, but actually True"),
        (
            dict(device_type="tpu"),
            "Unsupported device type 'tpu', only support 'Ascend', 'GPU', 'CPU' and None, case ignored",
        ),
        (dict(version_number=-1), "Parameter 'version_number' should be >= 0"),
        (dict(version_number="1"), "Parameter 'version_number' should be int, but actually <class 'str'>"),
        (dict(num_parallel_workers=65), "Parameter 'num_parallel_workers' should be in range [0,64]"),
    ],
)
def test_servable_start_config_checks(tmp_path, root, kwargs, text):
    make_servable(root)
    outcome = run_start(tmp_path, start_call(root, **kwargs))
    assert outcome.error == text
    assert_clean_failure(outcome)


def test_servable_start_config_name_checks(tmp_path, root):
    outcome = run_start(tmp_path, f"server.ServableStartConfig({root!r}, '')")
    assert outcome.error == "Parameter 'servable_name' should not be empty str"
    assert_clean_failure(outcome)
    outcome = run_start(tmp_path, "server.start_servables(['svc'])")
    assert outcome.error == (
        "The item of parameter 'servable_configs' should be ServableStartConfig, but actually <class 'str'>"
    )
    assert_clean_failure(outcome)


def test_failed_servable_stops_the_others_started_with_it(tmp_path, root):
    """Of several servables started together, one fails: the workers of the others are stopped too."""
    make_servable(root, name="good", config=PYTHON_ONLY_CONFIG, versions=())
    make_servable(root, name="svc", model="other.onnx")
    body = (
        f"server.start_servables([server.ServableStartConfig({root!r}, 'good', device_ids=(0, 1)),\n"
        f"                        server.ServableStartConfig({root!r}, 'svc', device_ids=(0, 1))])"
    )
    outcome = run_start(tmp_path, body)
    assert outcome.error is not None, outcome.output
    assert outcome.error.startswith(
        f"Load model failed, servable directory: '{root}', servable name: 'svc', model file: 'add.onnx'"
    ), outcome.error
    assert_clean_failure(outcome)


def test_same_servable_version_started_twice(tmp_path, root):
    make_servable(root)
    body = (
        f"server.start_servables([server.ServableStartConfig({root!r}, 'svc', device_ids=0),\n"
        f"                        server.ServableStartConfig({root!r}, 'svc', device_ids=1)])"
    )
    outcome = run_start(tmp_path, body)
    assert outcome.error == "servable svc version 1 has already been started"
    assert_clean_failure(outcome)


def test_start_works_after_a_failed_start(tmp_path, root):
    """A failed start disturbs nothing: the same process then starts the servable and serves it."""
    path = make_servable(root, model="other.onnx")
    address = f"127.0.0.1:{free_port()}"
    body = start_call(root)
    after = f"""
        import numpy as np
        from mindserve.client import Client
        from support.model_files import add_model
        add_model({os.path.join(path, "1", "add.onnx")!r}, batch_dim=2)
        {start_call(root, device_ids=(0, 1))}
        server.start_grpc_server({address!r})
        result = Client({address!r}, "svc", "add").infer([{{"x1": np.ones((2, 2), np.float32),
                                                         "x2": np.full((2, 2), 2, np.float32)}}])
        print("RESULT " + json.dumps(result[0]["y"].tolist()), flush=True)
        server.stop()
    """
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/: for support.model_files
    outcome = run_start(tmp_path, body, f"sys.path.insert(0, {tests_dir!r})\n" + textwrap.dedent(after))
    assert outcome.error is not None and outcome.error.startswith("Load model failed"), outcome.output
    assert "RESULT [[3.0, 3.0], [3.0, 3.0]]" in outcome.output, outcome.output
    assert outcome.exit_code == 0, outcome.output
    assert outcome.leftover == []
