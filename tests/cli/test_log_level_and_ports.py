"""Two settings for running more than one instance, and quieter: ``port_offset`` moves the default ports (an
address given is used as given) and ``log_level`` sets the level of the master's log lines; each from the YAML
file, the environment or the command line, with their errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from mindserve.cli.config import ConfigError, load_config
from support.paths import BUNDLED_SERVABLES
from support.processes import ServerProcess, free_port

pytestmark = pytest.mark.server  # the last test starts `mindserve serve`

READY = "ready; Ctrl-C or SIGTERM stops it\n"


def config(tmp_path, yaml: str = "", environ=None, options=None):
    file = None
    if yaml:
        file = tmp_path / "serving.yaml"
        file.write_text(yaml)
    return load_config(
        str(file) if file else None,
        environ=environ or {},
        options=options,
        cwd=str(tmp_path),
        bundled_directory=BUNDLED_SERVABLES,
    )


def test_a_port_offset_moves_every_default_port_and_no_given_address(tmp_path):
    moved = config(tmp_path, environ={"MINDSERVE_PORT_OFFSET": "10"})
    assert (moved.grpc_address, moved.rest_address, moved.metrics_address) == (
        "127.0.0.1:5510",
        "127.0.0.1:1510",
        "127.0.0.1:8012",
    )
    given = config(
        tmp_path,
        "port_offset: 3\ngrpc_address: 127.0.0.1:7000\n",
        options={"port_offset": None, "rest_address": "unix:/tmp/x.sock"},
    )
    assert (given.grpc_address, given.rest_address, given.metrics_address) == (
        "127.0.0.1:7000",
        "unix:/tmp/x.sock",
        "127.0.0.1:8005",
    )
    assert config(tmp_path, options={"port_offset": "0"}).grpc_address == "127.0.0.1:5500"


def test_the_log_level_from_each_layer(tmp_path):
    assert config(tmp_path).log_level == "info"
    assert config(tmp_path, "log_level: WARNING\n").log_level == "warning"
    assert config(tmp_path, "log_level: warning\n", environ={"MINDSERVE_LOG_LEVEL": "debug"}).log_level == "debug"
    assert (
        config(tmp_path, environ={"MINDSERVE_LOG_LEVEL": "debug"}, options={"log_level": "error"}).log_level == "error"
    )


@pytest.mark.parametrize(
    "where, value, text",
    [
        ("options", {"port_offset": "-1"}, "--port-offset: expected an int in [0, 50000], got -1"),
        ("options", {"port_offset": "ten"}, "--port-offset: expected an int in [0, 50000], got 'ten'"),
        (
            "environ",
            {"MINDSERVE_PORT_OFFSET": "60000"},
            "MINDSERVE_PORT_OFFSET: expected an int in [0, 50000], got 60000",
        ),
        ("options", {"log_level": "loud"}, "--log-level: expected one of debug, info, warning, error, got 'loud'"),
        ("yaml", "log_level: 3\n", "serving.yaml: log_level: expected one of debug, info, warning, error, got 3"),
    ],
)
def test_bad_values_name_the_setting(tmp_path, where, value, text):
    kwargs = {"yaml": value} if where == "yaml" else {where: value}
    with pytest.raises(ConfigError) as refused:
        config(tmp_path, **kwargs)
    assert str(refused.value).replace(str(tmp_path) + os.sep, "") == text


def test_log_level_warning_keeps_the_info_lines_out(tmp_path):
    port = free_port()
    stderr = open(tmp_path / "stderr", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mindserve",
            "serve",
            "--servable-directory",
            BUNDLED_SERVABLES,
            "--grpc-address",
            f"127.0.0.1:{port}",
            "--rest-address",
            "off",
            "--metrics-address",
            "off",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        cwd=str(tmp_path),
        env={**os.environ, "MINDSERVE_SERVABLES": "add"},
    )
    stderr.close()
    server = ServerProcess(proc, f"127.0.0.1:{port}")
    try:
        server.read_until(READY, 60)
        assert server.output.endswith(f"gRPC listening on 127.0.0.1:{port}\n{READY}")  # (stdout: always printed)
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.stop(signal.SIGKILL)
    assert "INFO" not in (tmp_path / "stderr").read_text()
