"""The `mindserve` command: `serve` as a real process (a YAML file, the defaults with environment overrides, the
console script), `infer` against it with every kind of value, errors, SIGINT / SIGTERM, bad configuration; and
the parsing of infer's values in this process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from mindserve.cli import main
from mindserve.cli.values import InputError, format_instance, format_value, parse_inputs, parse_value
from support.paths import BUNDLED_SERVABLES, REPO
from support.processes import ServerProcess, child_pids, free_port, pid_alive

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

PYTHON_M = [sys.executable, "-m", "mindserve"]
CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "mindserve")  # pip install -e puts it there
READY = "ready; Ctrl-C or SIGTERM stops it\n"
DIGIT_IMAGE = os.path.join(REPO, "example", "digits", "test_images", "0004_4.png")  # a 4
IRIS_MODEL = os.path.join(BUNDLED_SERVABLES, "iris", "1", "iris_logreg.onnx")
SETOSA = [5.1, 3.5, 1.4, 0.2]


def start_serve(tmp_path, command: list, env: dict | None = None) -> ServerProcess:
    """Run a `serve` command in ``tmp_path`` until it prints its ready line; stderr goes to tmp_path/stderr."""
    stderr = open(tmp_path / "stderr", "w")
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        cwd=str(tmp_path),
        env={**os.environ, "MINDSERVE_METRICS_ADDRESS": "off", **(env or {})},
    )
    stderr.close()
    server = ServerProcess(proc, "")
    try:
        server.read_until(READY, 60)
    except Exception:
        server.stop(signal.SIGKILL)
        raise
    return server


def infer(*args: str, cwd=None, command=PYTHON_M) -> subprocess.CompletedProcess:
    return subprocess.run([*command, "infer", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def assert_stops(server: ServerProcess, sig: int, socket_file: str | None = None) -> None:
    """``sig`` ends the server with exit code 0 after its last lines, and its workers with it."""
    workers = child_pids(server.proc.pid)
    assert workers
    assert server.stop(sig) == 0, server.output
    assert server.output.endswith(f"{READY}stopping ({signal.Signals(sig).name})\nstopped\n"), server.output
    deadline = time.monotonic() + 10  # a worker's exit may be reaped an instant after the server's own
    while any(pid_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if pid_alive(pid)]
    if socket_file:
        assert not os.path.exists(socket_file)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`python -m mindserve serve --config serving.yaml`: add, iris and digits over gRPC on a free port, REST off."""
    tmp = tmp_path_factory.mktemp("cli_serve")
    port = free_port()
    (tmp / "serving.yaml").write_text(f"""\
servable_directory: {BUNDLED_SERVABLES}
servables:
  - add
  - name: iris
    max_batch_size: 8
  - name: digits
    version: 1
grpc_address: 127.0.0.1:{port}
rest_address: null
""")
    server = start_serve(tmp, [*PYTHON_M, "serve", "--config", "serving.yaml"])
    server.tmp = tmp
    server.address = f"127.0.0.1:{port}"
    yield server
    server.stop(signal.SIGKILL)


def test_serve_prints_the_ready_servables_and_the_address(served):
    assert served.output == (
        f"servable add version 1 from {BUNDLED_SERVABLES}/add on device 0: methods add_common, add_cast\n"
        f"servable iris version 1 from {BUNDLED_SERVABLES}/iris on device 0: methods predict, predict_with_puid, "
        f"classify\n"
        f"servable digits version 1 from {BUNDLED_SERVABLES}/digits on device 0: methods classify_top1, "
        f"classify_top5, classify_top1_batch\n"
        f"gRPC listening on {served.address}\n"
        f"{READY}"
    )


def test_infer_json_arrays(served):
    done = infer(served.address, "add", "add_cast", "x1=[[1, 2], [3, 4]]", "x2=[[0.5, 0], [0, 0]]")
    assert (done.returncode, done.stdout, done.stderr) == (0, "y=array([[1.5, 2. ], [3. , 4. ]], dtype=float32)\n", "")


def test_infer_npy_files(served, tmp_path):
    np.save(tmp_path / "x1.npy", np.full((2, 2), 1.25, np.float32))
    np.save(tmp_path / "x2.npy", np.eye(2, dtype=np.float32))
    done = infer(served.address, "add", "add_common", "x1=@x1.npy", "x2=@x2.npy", "--version", "1", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "y=array([[2.25, 1.25], [1.25, 2.25]], dtype=float32)\n",
        "",
    )


def test_infer_numbers_and_a_plain_string(served):
    session = onnxruntime.InferenceSession(IRIS_MODEL, providers=["CPUExecutionProvider"])
    padded = np.zeros((8, 4), np.float32)  # the model's fixed batch of 8
    padded[0] = SETOSA
    probabilities = session.run(["probabilities"], {"x": padded})[0][0]
    done = infer(served.address, "iris", "predict_with_puid", f"x={SETOSA}", "puid=flower-1")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"label='setosa' probabilities={probabilities!r} puid='flower-1'\n"


def test_infer_an_image_file_with_the_console_script(served):
    done = infer(served.address, "digits", "classify_top1", f"image=@{DIGIT_IMAGE}", command=[CONSOLE_SCRIPT])
    assert (done.returncode, done.stdout, done.stderr) == (0, "label='4'\n", "")


def test_infer_types_json_numbers_as_the_metadata_says(served):
    # add_common feeds the FP32 model directly: its metadata says FP32, so JSON integers are sent as float32
    done = infer(served.address, "add", "add_common", "x1=[[1, 2], [3, 4]]", "x2=[[1, 1], [1, 1]]")
    assert (done.returncode, done.stdout, done.stderr) == (0, "y=array([[2., 3.], [4., 5.]], dtype=float32)\n", "")
    done = infer(
        served.address, "add", "add_common", "x1=[[1, 2], [3, 4]]", "x2=[[1, 1], [1, 1]]", "--dtype", "x2=float64"
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert (
        done.stderr == "error: Given model input 1 data type kMSI_Float64 not match the data type kMSI_Float32 "
        "defined in model: input 'x2' of model tensor_add.onnx takes float32 [2, 2], given float64 "
        "[2, 2]\n"
    )
    done = infer(served.address, "add", "add_common", "x1=1", "x2=1", "--dtype", "x1=str")
    assert (done.returncode, done.stderr) == (
        2,
        "mindserve infer: error: --dtype: expected name=TYPE with a numeric "
        "numpy type (float32, int64, bool, ...), got 'x1=str'\n",
    )


def test_infer_several_instances_from_a_file(served, tmp_path):
    (tmp_path / "flowers.json").write_text('[{"x": [5.1, 3.5, 1.4, 0.2]}, {"x": [6.7, 3.0, 5.2, 2.3]}]')
    done = infer(served.address, "iris", "predict_with_puid", "--instances", "flowers.json", "puid=p", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("label='setosa'") and lines[1].startswith("label='virginica'")
    assert all(line.endswith("puid='p'") for line in lines)
    (tmp_path / "bad.json").write_text('{"x": 1}')
    done = infer(served.address, "iris", "predict", "--instances", "bad.json", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        "mindserve infer: error: --instances: 'bad.json' must hold a JSON array of objects (one per instance)\n",
    )


def test_infer_prints_errors_from_the_server_with_exit_code_1(served):
    done = infer(served.address, "digits", "classify_top1", "image=not an image")
    assert (done.returncode, done.stdout) == (1, "")
    assert (
        done.stderr == "error: Call Function 'digits.preprocess' Failed, method: 'classify_top1', stage index"
        "(begin with 1): 1, error msg: image must be the bytes of an encoded image, got str\n"
    )
    done = infer(served.address, "add", "subtract", "x1=1", "x2=1")
    assert (done.returncode, done.stdout) == (1, "")
    assert (
        done.stderr == "error: Request servable(add) method(subtract) , method is not available: servable add "
        "has methods add_cast, add_common\n"
    )


def test_infer_errors_before_sending_and_without_a_server(tmp_path):
    done = infer(f"127.0.0.1:{free_port()}", "add", "add_common", "x1=@missing.npy", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "mindserve infer: error: x1: cannot read 'missing.npy': No such file or directory\n"
    done = infer(f"127.0.0.1:{free_port()}", "add", "add_common", "x1=1", "x2=1")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("error: Grpc Error, (14, 'unavailable'), failed to connect to all addresses")


def test_sigint_stops_a_unix_socket_server_and_its_workers(tmp_path):
    socket_file = str(tmp_path / "mindserve.sock")
    (tmp_path / "serving.yaml").write_text(
        f"servables: [{{name: add, device_ids: [0, 1]}}]\ngrpc_address: unix:{socket_file}\nrest_address: null\n"
    )
    server = start_serve(
        tmp_path,
        [*PYTHON_M, "serve", "--config", "serving.yaml"],
        env={"MINDSERVE_SERVABLE_DIRECTORY": BUNDLED_SERVABLES},
    )
    try:
        assert server.output.startswith(
            f"servable add version 1 from {BUNDLED_SERVABLES}/add on devices 0, 1: methods add_common, add_cast\n"
        )
        assert len(child_pids(server.proc.pid)) == 2
        done = infer(f"unix:{socket_file}", "add", "add_cast", "x1=[[1, 1], [1, 1]]", "x2=[[true, false], [1, 2]]")
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr == "mindserve infer: error: x2: a JSON array may not mix bools and numbers\n"
        done = infer(f"unix:{socket_file}", "add", "add_cast", "x1=[[1, 1], [1, 1]]", "x2=[[1, 2], [3, 4.5]]")
        assert (done.returncode, done.stdout, done.stderr) == (
            0,
            "y=array([[2. , 3. ], [4. , 5.5]], dtype=float32)\n",
            "",
        )
        assert_stops(server, signal.SIGINT, socket_file)
    finally:
        server.stop(signal.SIGKILL)


def test_the_default_serve_with_the_console_script_until_sigterm(tmp_path):
    """No arguments: every bundled servable, gRPC and REST (here on free ports through the environment; the
    defaults 127.0.0.1:5500 and 1500 are asserted in test_cli_config)."""
    grpc_port, rest_port = free_port(), free_port()
    server = start_serve(
        tmp_path,
        [CONSOLE_SCRIPT, "serve"],
        env={"MINDSERVE_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}", "MINDSERVE_REST_ADDRESS": f"127.0.0.1:{rest_port}"},
    )
    try:
        lines = server.output.splitlines()
        served = {line.split()[1] for line in lines if line.startswith("servable ")}
        assert {"add", "add_sub", "digits", "iris"} <= served
        assert (
            f"servable add_sub version 1 from {BUNDLED_SERVABLES}/add_sub on device 0: methods "
            f"add_sub_only_model, add_sub_complex, add_sub_call_model" in lines
        )
        assert lines[-3:] == [
            f"gRPC listening on 127.0.0.1:{grpc_port}",
            f"REST listening on http://127.0.0.1:{rest_port}",
            READY.strip(),
        ]
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v2/health/ready", timeout=10) as reply:
            assert reply.status == 200
        done = infer(
            f"127.0.0.1:{grpc_port}",
            "add_sub",
            "add_sub_complex",
            "x1=[[1.5, 1], [1, 1]]",
            "x2=[[1.0, 1], [1, 1]]",
            "x3=[[0.0, 0], [0, 4]]",
            command=[CONSOLE_SCRIPT],
        )
        assert (done.returncode, done.stdout, done.stderr) == (
            0,
            "y=array([[4.5, 4. ], [4. , 0. ]], dtype=float32)\n",
            "",
        )
        assert_stops(server, signal.SIGTERM)
    finally:
        server.stop(signal.SIGKILL)


def test_mutual_tls_from_environment_variables(tmp_path, tls_files):
    grpc_port, rest_port = free_port(), free_port()
    server = start_serve(
        tmp_path,
        [*PYTHON_M, "serve"],
        env={
            "MINDSERVE_SERVABLE_DIRECTORY": BUNDLED_SERVABLES,
            "MINDSERVE_SERVABLES": "add",
            "MINDSERVE_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
            "MINDSERVE_REST_ADDRESS": f"127.0.0.1:{rest_port}",
            "MINDSERVE_TLS_CERTIFICATE": tls_files["server.pem"],
            "MINDSERVE_TLS_PRIVATE_KEY": tls_files["server.key"],
            "MINDSERVE_TLS_CA": tls_files["ca.pem"],
            "MINDSERVE_TLS_VERIFY_CLIENT": "true",
        },
    )
    try:
        assert server.output.splitlines()[-3:] == [
            f"gRPC listening on 127.0.0.1:{grpc_port} (TLS)",
            f"REST listening on https://127.0.0.1:{rest_port}",
            READY.strip(),
        ]
        inputs = ("x1=[[1, 2], [3, 4]]", "x2=[[1, 1], [1, 1]]")
        done = infer(
            f"localhost:{grpc_port}",
            "add",
            "add_cast",
            *inputs,
            "--ca",
            tls_files["ca.pem"],
            "--cert",
            tls_files["client.pem"],
            "--key",
            tls_files["client.key"],
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "y=array([[2., 3.], [4., 5.]], dtype=float32)\n", "")
        done = infer(f"localhost:{grpc_port}", "add", "add_cast", *inputs, "--ca", tls_files["ca.pem"])
        assert (done.returncode, done.stdout) == (1, "")  # no client certificate: refused
        assert done.stderr.startswith("error: Grpc Error, (14, 'unavailable'), "), done.stderr
        assert_stops(server, signal.SIGTERM)
    finally:
        server.stop(signal.SIGKILL)


def test_bad_configuration_exits_2_before_anything_starts(tmp_path):
    (tmp_path / "serving.yaml").write_text("servables:\n  - add\n  - name: iris\n    device_ids: x\n")
    done = subprocess.run(
        [*PYTHON_M, "serve", "--config", "serving.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
        env={**os.environ, "MINDSERVE_SERVABLE_DIRECTORY": BUNDLED_SERVABLES},
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert (
        done.stderr == "mindserve serve: error: serving.yaml: servables[1].device_ids: expected a list of "
        "non-negative ints, got 'x'\n"
    )


def processes_mentioning(text: str) -> list[int]:
    """The live processes whose command line contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read() and pid_alive(int(entry)):
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def test_a_failing_start_exits_1_and_stops_what_had_started(tmp_path):
    # the servables through a link of this test's own: its workers are those whose command line names it
    linked = str(tmp_path / "linked_servables")
    os.symlink(BUNDLED_SERVABLES, linked)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = "127.0.0.1:%d" % busy.getsockname()[1]
        done = subprocess.run(
            [*PYTHON_M, "serve", "--servable-directory", linked, "--grpc-address", address, "--rest-address", "off"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(tmp_path),
            env={**os.environ, "MINDSERVE_SERVABLES": "add,iris", "MINDSERVE_METRICS_ADDRESS": "off"},
        )
    assert (done.returncode, done.stdout) == (1, "")
    assert "servable iris version 1 ready on 1 worker(s)" in done.stderr  # the servables had started
    last = done.stderr.splitlines()[-1]
    assert last == f"mindserve serve: error: gRPC server failed to listen on {address}: the address is already in use"
    assert "chttp2" not in done.stderr, done.stderr  # gRPC's C++ log line about the bind is not printed
    assert "Traceback" not in done.stderr
    assert processes_mentioning(linked) == []


# ---- the command line in this process ----


def test_version_and_argument_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == "mindserve 0.1.0\n"
    assert main(["infer", "127.0.0.1:1", "add", "add_common", "--version", "-1"]) == 2
    assert capsys.readouterr().err == "mindserve infer: error: --version: expected an int >= 0\n"
    assert main(["infer", "127.0.0.1:1", "add", "add_common", "x1"]) == 2
    assert capsys.readouterr().err == "mindserve infer: error: expected name=value, got 'x1'\n"
    assert main(["infer", "127.0.0.1:1", "add", "add_common", "--cert", __file__]) == 2
    assert capsys.readouterr().err == "mindserve infer: error: --cert and --key go together\n"
    assert main(["infer", "127.0.0.1:1", "add", "add_common", "--ca", "/nonexistent.pem"]) == 2
    assert capsys.readouterr().err == "mindserve infer: error: --ca: file '/nonexistent.pem' does not exist\n"
    assert main(["serve", "--grpc-address", "off", "--rest-address", "off"]) == 2
    assert (
        capsys.readouterr().err == "mindserve serve: error: grpc_address and rest_address are both off: "
        "nothing would answer requests\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2


def check_array(value, expected: np.ndarray) -> None:
    assert isinstance(value, np.ndarray)
    assert (value.dtype, value.shape) == (expected.dtype, expected.shape)
    assert np.array_equal(value, expected)


def test_values_typed_as_in_mindspore_rest(tmp_path):
    check_array(parse_value("x", "3"), np.array(3, np.int32))
    check_array(parse_value("x", "-1.5"), np.array(-1.5, np.float32))
    check_array(parse_value("x", "true"), np.array(True))
    check_array(parse_value("x", "[[1, 2], [3, 4]]"), np.array([[1, 2], [3, 4]], np.int32))
    check_array(parse_value("x", "[1, 2.5]"), np.array([1, 2.5], np.float32))
    check_array(parse_value("x", "[[true], [false]]"), np.array([[True], [False]]))
    check_array(parse_value("x", "[]"), np.zeros((0,), np.float32))
    check_array(parse_value("x", "[[], []]"), np.zeros((2, 0), np.float32))
    check_array(parse_value("x", "[2147483647, -2147483648]"), np.array([2**31 - 1, -(2**31)], np.int32))
    assert parse_value("x", "hello world") == "hello world"
    assert parse_value("x", '"42"') == "42"
    assert parse_value("x", '"@name"') == "@name"
    assert parse_value("x", "null") == "null"
    assert parse_value("x", '{"a": 1}') == '{"a": 1}'
    assert parse_value("x", "") == ""
    np.save(tmp_path / "a.npy", np.arange(6, dtype=np.uint16).reshape(2, 3))
    check_array(parse_value("x", f"@{tmp_path}/a.npy"), np.arange(6, dtype=np.uint16).reshape(2, 3))
    Image.new("L", (8, 8), 255).save(tmp_path / "white.png")
    png = (tmp_path / "white.png").read_bytes()
    assert parse_value("x", f"@{tmp_path}/white.png") == png and png.startswith(b"\x89PNG")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01raw")
    assert parse_value("x", f"@{tmp_path}/blob.bin") == b"\x00\x01raw"
    instance = parse_inputs(["a=1", "b=x=y", "c="])
    assert list(instance) == ["a", "b", "c"] and instance["b"] == "x=y" and instance["c"] == ""


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[1], [1, 2]]", "x: a JSON array must be rectangular (nested lists of equal lengths)"),
        ("[1, [2]]", "x: a JSON array must be rectangular (nested lists of equal lengths)"),
        ("[1, true]", "x: a JSON array may not mix bools and numbers"),
        ('["a", "b"]', 'x: a JSON array may hold numbers or bools, got "a"'),
        ("[null]", "x: a JSON array may hold numbers or bools, got null"),
        ("[2147483648]", "x: 2147483648 does not fit int32 (write it as a float, or send a .npy file)"),
        ("@", "x: '@' must be followed by a file name"),
        ("@/nonexistent/file.png", "x: cannot read '/nonexistent/file.png': No such file or directory"),
    ],
)
def test_value_errors(text, message):
    with pytest.raises(InputError) as info:
        parse_value("x", text)
    assert str(info.value) == message


def test_value_errors_of_inputs_and_npy_files(tmp_path):
    (tmp_path / "fake.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError) as info:
        parse_value("x", f"@{tmp_path}/fake.npy")
    assert str(info.value).startswith(f"x: cannot load '{tmp_path}/fake.npy' as .npy: ")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError) as info:
        parse_value("x", f"@{tmp_path}/objects.npy")
    assert str(info.value).startswith(f"x: cannot load '{tmp_path}/objects.npy' as .npy: Object arrays cannot be")
    for items, message in ((["=1"], "expected name=value, got '=1'"), (["a=1", "a=2"], "a: given twice")):
        with pytest.raises(InputError) as info:
            parse_inputs(items)
        assert str(info.value) == message


def test_results_print_on_one_line_by_output_name():
    assert format_value(np.array([[2, 2], [2, 2]], np.float32)) == "array([[2., 2.], [2., 2.]], dtype=float32)"
    assert format_value(np.arange(3)) == "array([0, 1, 2])"
    assert format_value("7") == "'7'" and format_value(b"\x00") == "b'\\x00'"
    assert format_value(["a", "b"]) == "['a', 'b']"
    assert (
        format_instance({"scores": np.array([0.5], np.float32), "label": "7"})
        == "label='7' scores=array([0.5], dtype=float32)"
    )
