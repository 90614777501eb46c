"""The settings of `mindserve serve` (mindserve.cli.config): defaults, the YAML file, environment variables and
options in their order of precedence, and the exact text of each configuration error. No server is started."""

from __future__ import annotations

import os

import pytest

from mindserve.cli.config import BUNDLED_SERVABLES as CONFIG_BUNDLED
from mindserve.cli.config import (
    ConfigError,
    ServableSettings,
    ServeConfig,
    TLSSettings,
    default_servable_directory,
    load_config,
)
from support.paths import BUNDLED_SERVABLES


@pytest.fixture
def tree(tmp_path):
    """tmp/servables/{alpha (versions 1, 2), beta (no version folder)}, a folder that is no servable, TLS files,
    and tmp/other/gamma (version 3); the current directory for the tests is tmp/work (empty)."""
    for name, versions in (("alpha", (1, 2)), ("beta", ())):
        os.makedirs(tmp_path / "servables" / name)
        (tmp_path / "servables" / name / "servable_config.py").write_text("")
        for version in versions:
            os.makedirs(tmp_path / "servables" / name / str(version))
    os.makedirs(tmp_path / "servables" / "not_a_servable")
    os.makedirs(tmp_path / "other" / "gamma" / "3")
    (tmp_path / "other" / "gamma" / "servable_config.py").write_text("")
    for name in ("server.pem", "server.key", "ca.pem"):
        (tmp_path / name).write_text("pem")
    os.makedirs(tmp_path / "work")
    return tmp_path


def load(tree, yaml_text=None, environ=None, options=None, bundled=None) -> ServeConfig:
    path = None
    if yaml_text is not None:
        path = str(tree / "serving.yaml")
        (tree / "serving.yaml").write_text(yaml_text)
    return load_config(
        path,
        environ=environ or {},
        options=options,
        cwd=str(tree / "work"),
        bundled_directory=bundled or str(tree / "servables"),
    )


def error_of(tree, yaml_text=None, environ=None, options=None, bundled=None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tree, yaml_text, environ, options, bundled)
    return str(info.value).replace(str(tree), "TMP")


def servable(tree, name, version, folder="servables", **settings) -> ServableSettings:
    return ServableSettings(directory=str(tree / folder), name=name, version=version, **settings)


# ---- defaults ----


def test_defaults_serve_every_servable_found_on_device_0_with_grpc_5500_and_rest_1500(tree):
    assert load(tree) == ServeConfig(
        servables=(servable(tree, "alpha", 2), servable(tree, "beta", 0)),
        grpc_address="127.0.0.1:5500",
        rest_address="127.0.0.1:1500",
        tls=None,
        max_msg_mb_size=100,
        max_enqueued_requests=10000,
        max_request_instances=10000,
    )


def test_the_default_directory_is_the_bundled_servables_of_the_checkout(tmp_path):
    assert CONFIG_BUNDLED == BUNDLED_SERVABLES
    config = load_config(environ={}, cwd=str(tmp_path))
    names = [s.name for s in config.servables]
    assert {"add", "add_sub", "digits", "iris"} <= set(names) and names == sorted(names)
    assert {s.directory for s in config.servables} == {BUNDLED_SERVABLES}
    assert {s.device_ids for s in config.servables} == {(0,)}


def test_servables_in_the_current_directory_come_before_the_bundled_ones(tree):
    os.makedirs(tree / "work" / "servables" / "mine")
    (tree / "work" / "servables" / "mine" / "servable_config.py").write_text("")
    assert default_servable_directory(str(tree / "work"), str(tree / "servables")) == str(tree / "work" / "servables")
    assert load(tree).servables == (servable(tree, "mine", 0, "work/servables"),)
    assert default_servable_directory(str(tree), "/nonexistent") == str(tree / "servables")


def test_no_servable_directory_anywhere(tree):
    assert error_of(tree, bundled="/nonexistent/servables") == (
        "no servable directory: neither 'TMP/work/servables' nor the bundled '/nonexistent/servables' exists; give "
        "one with --servable-directory, MINDSERVE_SERVABLE_DIRECTORY or servable_directory in a --config file"
    )


def test_a_servable_directory_without_servables(tree):
    os.makedirs(tree / "empty")
    assert error_of(tree, environ={"MINDSERVE_SERVABLE_DIRECTORY": "../empty"}) == (
        "MINDSERVE_SERVABLE_DIRECTORY: no servables in 'TMP/empty' (a servable is a folder holding servable_config.py)"
    )
    assert error_of(tree, bundled=str(tree / "empty")) == (
        "servable directory: no servables in 'TMP/empty' (a servable is a folder holding servable_config.py)"
    )


def test_an_empty_file_or_null_values_mean_the_defaults(tree):
    assert load(tree, "") == load(tree)
    assert load(tree, "servable_directory: null\nservables: []\ntls: null\n") == load(tree)


# ---- the YAML file ----

FULL_YAML = """\
servable_directory: ../servables
servables:
  - beta
  - name: alpha
    version: 1
    device_ids: [0, 1]
    device_type: GPU
    max_batch_size: 32
    max_batch_delay_ms: 2.5
    shm_size_mb: 16
  - name: gamma
    directory: ../other
    device_ids: 3
grpc_address: unix:/tmp/mindserve.sock
rest_address: 127.0.0.1:8080
tls:
  certificate: ../server.pem
  private_key: ~/server.key
  ca: ../ca.pem
  verify_client: true
max_msg_mb_size: 512
max_enqueued_requests: 7
max_request_instances: 11
max_stream_memory_mb: 64
"""


def test_every_setting_of_the_file(tree, monkeypatch):
    monkeypatch.setenv("HOME", str(tree))
    os.makedirs(tree / "conf")
    (tree / "conf" / "serving.yaml").write_text(FULL_YAML)
    config = load_config(str(tree / "conf" / "serving.yaml"), environ={}, cwd=str(tree / "work"))
    assert config == ServeConfig(
        servables=(
            servable(tree, "beta", 0),
            servable(
                tree,
                "alpha",
                1,
                device_ids=(0, 1),
                device_type="GPU",
                max_batch_size=32,
                max_batch_delay_ms=2.5,
                shm_size_mb=16,
            ),
            servable(tree, "gamma", 3, "other", device_ids=(3,)),
        ),
        grpc_address="unix:/tmp/mindserve.sock",
        rest_address="127.0.0.1:8080",
        tls=TLSSettings(
            certificate=str(tree / "server.pem"),
            private_key=str(tree / "server.key"),
            ca=str(tree / "ca.pem"),
            verify_client=True,
        ),
        max_msg_mb_size=512,
        max_enqueued_requests=7,
        max_request_instances=11,
        max_stream_memory_mb=64,
    )


def test_either_server_may_be_off(tree):
    config = load(tree, "grpc_address: null\nrest_address: 127.0.0.1:9000\n")
    assert (config.grpc_address, config.rest_address) == (None, "127.0.0.1:9000")
    config = load(tree, "rest_address: off\n")  # YAML reads off as false
    assert (config.grpc_address, config.rest_address) == ("127.0.0.1:5500", None)
    for quoted in ('"off"', "'OFF'", '"Off"'):  # the text off, as the environment and the options take it
        config = load(tree, f"rest_address: {quoted}\n")
        assert (config.grpc_address, config.rest_address) == ("127.0.0.1:5500", None)


def test_the_metrics_server_is_on_8002_unless_moved_or_turned_off(tree):
    assert load(tree).metrics_address == "127.0.0.1:8002"
    assert load(tree, "metrics: unix:/tmp/metrics.sock\n").metrics_address == "unix:/tmp/metrics.sock"
    assert load(tree, "metrics: off\n").metrics_address is None  # YAML reads off as false
    assert (
        load(tree, "metrics: 127.0.0.1:1\n", environ={"MINDSERVE_METRICS_ADDRESS": "127.0.0.1:2"}).metrics_address
        == "127.0.0.1:2"
    )
    assert load(tree, environ={"MINDSERVE_METRICS_ADDRESS": "OFF"}).metrics_address is None
    assert (
        load(
            tree, environ={"MINDSERVE_METRICS_ADDRESS": "127.0.0.1:2"}, options={"metrics": "127.0.0.1:3"}
        ).metrics_address
        == "127.0.0.1:3"
    )
    assert (
        error_of(tree, "metrics: 127.0.0.1:1500\n")
        == "TMP/serving.yaml: metrics: the same address as rest_address (127.0.0.1:1500)"
    )
    assert (
        error_of(tree, options={"metrics": "nowhere"})
        == "--metrics-address: expected 'host:port' or 'unix:/path', got 'nowhere'"
    )


def test_client_shared_memory_is_off_unless_allowed(tree):
    assert load(tree).allow_client_shm is False
    assert load(tree, "allow_client_shm: true\n").allow_client_shm is True
    assert (
        load(tree, "allow_client_shm: true\n", environ={"MINDSERVE_ALLOW_CLIENT_SHM": "false"}).allow_client_shm
        is False
    )
    assert load(tree, environ={"MINDSERVE_ALLOW_CLIENT_SHM": "1"}).allow_client_shm is True
    assert (
        error_of(tree, "allow_client_shm: sometimes\n")
        == "TMP/serving.yaml: allow_client_shm: expected true or false, got 'sometimes'"
    )


def test_client_shm_owners_name_users_of_this_host_or_uids(tree):
    assert load(tree).client_shm_owners == ()
    assert load(tree, "client_shm_owners: [nobody, 1001]\n").client_shm_owners == ("nobody", 1001)
    assert load(tree, "client_shm_owners: []\n").client_shm_owners == ()
    assert load(
        tree, "client_shm_owners: [nobody]\n", environ={"MINDSERVE_CLIENT_SHM_OWNERS": "1001, root"}
    ).client_shm_owners == (1001, "root")
    assert (
        error_of(tree, "client_shm_owners: [no-such-user-here]\n")
        == "TMP/serving.yaml: client_shm_owners: no user 'no-such-user-here' on this host"
    )
    assert (
        error_of(tree, "client_shm_owners: nobody\n")
        == "TMP/serving.yaml: client_shm_owners: expected a list of user names or uids, got 'nobody'"
    )
    assert (
        error_of(tree, "client_shm_owners: [-1]\n")
        == "TMP/serving.yaml: client_shm_owners: uid -1 is not in [0, 4294967294]"
    )
    assert (
        error_of(tree, "client_shm_owners: [[1]]\n")
        == "TMP/serving.yaml: client_shm_owners: expected a user name or a uid, got [1]"
    )
    assert (
        error_of(tree, environ={"MINDSERVE_CLIENT_SHM_OWNERS": "nobody,,1"})
        == "MINDSERVE_CLIENT_SHM_OWNERS: expected a user name or a uid, got ''"
    )


def test_the_ava_section_names_what_media_streams_run_by_default(tree):
    from mindserve._config import MediaStreamConfig

    assert load(tree).media_stream is None
    config = load(tree, "ava: {servable: frames, method: intensity, batch_size: 3}\n").media_stream
    assert isinstance(config, MediaStreamConfig)
    assert (config.servable, config.method, config.version, config.batch_size) == ("frames", "intensity", 0, 3)
    assert error_of(tree, "ava: {servable: frames}\n") == "TMP/serving.yaml: ava: missing key 'method'"
    assert (
        error_of(tree, "ava: {servable: frames, method: m, batch_size: 65}\n")
        == "TMP/serving.yaml: ava.batch_size: expected an int in [1, 64], got 65"
    )
    assert (
        error_of(tree, "ava: {servable: frames, method: m, batch: 2}\n")
        == "TMP/serving.yaml: ava.batch: unknown key (known keys: servable, method, version, batch_size)"
    )


# ---- environment variables and options ----


def test_environment_variables_override_the_file(tree):
    environ = {
        "MINDSERVE_SERVABLE_DIRECTORY": str(tree / "servables"),
        "MINDSERVE_SERVABLES": "alpha, gamma",
        "MINDSERVE_DEVICE_IDS": "2,3",
        "MINDSERVE_DEVICE_TYPE": "Ascend",
        "MINDSERVE_GRPC_ADDRESS": "127.0.0.1:7000",
        "MINDSERVE_REST_ADDRESS": "off",
        "MINDSERVE_MAX_MSG_MB_SIZE": "8",
        "MINDSERVE_MAX_ENQUEUED_REQUESTS": "9",
        "MINDSERVE_MAX_REQUEST_INSTANCES": "12",
        "MINDSERVE_MAX_STREAM_MEMORY_MB": "32",
        "MINDSERVE_TLS_CERTIFICATE": "../server.pem",
        "MINDSERVE_TLS_PRIVATE_KEY": "../server.key",
        "MINDSERVE_TLS_CA": "../ca.pem",
        "MINDSERVE_TLS_VERIFY_CLIENT": "TRUE",
        "MINDSERVE_UNRELATED": "ignored",
    }
    os.makedirs(tree / "servables" / "gamma" / "1")
    (tree / "servables" / "gamma" / "servable_config.py").write_text("")
    config = load(
        tree,
        "servable_directory: elsewhere\nservables: [{name: beta, shm_size_mb: 8}]\n"
        "grpc_address: 1.2.3.4:5\nmax_msg_mb_size: 1\n",
        environ=environ,
    )
    assert config == ServeConfig(
        servables=(
            servable(tree, "alpha", 2, device_ids=(2, 3), device_type="Ascend"),
            servable(tree, "gamma", 1, device_ids=(2, 3), device_type="Ascend"),
        ),
        grpc_address="127.0.0.1:7000",
        rest_address=None,
        tls=TLSSettings(
            certificate=str(tree / "server.pem"),
            private_key=str(tree / "server.key"),
            ca=str(tree / "ca.pem"),
            verify_client=True,
        ),
        max_msg_mb_size=8,
        max_enqueued_requests=9,
        max_request_instances=12,
        max_stream_memory_mb=32,
    )


def test_device_variables_apply_to_listed_and_found_servables_and_empty_variables_are_unset(tree):
    config = load(tree, "servables: [{name: alpha, device_ids: [5]}]\n", environ={"MINDSERVE_DEVICE_IDS": "1"})
    assert config.servables == (servable(tree, "alpha", 2, device_ids=(1,)),)
    config = load(tree, environ={"MINDSERVE_DEVICE_IDS": "4", "MINDSERVE_GRPC_ADDRESS": ""})
    assert [s.device_ids for s in config.servables] == [(4,), (4,)] and config.grpc_address == "127.0.0.1:5500"


def test_tls_variables_complete_the_files_tls_section(tree):
    config = load(
        tree,
        "tls:\n  certificate: server.pem\n  private_key: server.key\n",
        environ={"MINDSERVE_TLS_CA": str(tree / "ca.pem"), "MINDSERVE_TLS_VERIFY_CLIENT": "1"},
    )
    assert config.tls == TLSSettings(str(tree / "server.pem"), str(tree / "server.key"), str(tree / "ca.pem"), True)


def test_options_override_environment_variables(tree):
    config = load(
        tree,
        "rest_address: 127.0.0.1:1\n",
        environ={"MINDSERVE_GRPC_ADDRESS": "127.0.0.1:2", "MINDSERVE_SERVABLE_DIRECTORY": "/nonexistent"},
        options={"servable_directory": "../other", "grpc_address": "unix:/tmp/s.sock", "rest_address": "OFF"},
    )
    assert config.servables == (servable(tree, "gamma", 3, "other"),)
    assert (config.grpc_address, config.rest_address) == ("unix:/tmp/s.sock", None)


# ---- errors: each names its source and key ----

FILE_ERRORS = [
    (
        "servables: [alpha, {name: beta, device_ids: x}]",
        "servables[1].device_ids: expected a list of non-negative ints, got 'x'",
    ),
    (
        "servables: [{name: alpha, device_ids: [0, -1]}]",
        "servables[0].device_ids: expected a list of non-negative ints, got [0, -1]",
    ),
    (
        "servables: [{name: alpha, device_ids: []}]",
        "servables[0].device_ids: expected a list of non-negative ints, got []",
    ),
    (
        "servables: [{name: alpha, device_ids: [true]}]",
        "servables[0].device_ids: expected a list of non-negative ints, got [True]",
    ),
    ("servables: [{name: alpha, device_ids: [1, 1]}]", "servables[0].device_ids: device ids must differ, got [1, 1]"),
    (
        "servables: [{name: alpha, devices: [0]}]",
        "servables[0].devices: unknown key (known keys: name, directory, version, device_ids, device_type, "
        "max_batch_size, max_batch_delay_ms, shm_size_mb, num_parallel_workers, max_queue_delay_ms)",
    ),
    (
        "grpc_adress: 127.0.0.1:1",
        "grpc_adress: unknown key (known keys: servable_directory, servables, grpc_address, rest_address, metrics, "
        "tls, "
        "max_msg_mb_size, max_enqueued_requests, max_request_instances, access, ava, allow_client_shm, "
        "client_shm_owners, max_stream_memory_mb, log_level, port_offset)",
    ),
    (
        "tls: {certificate: server.pem, private_key: server.key, verify: true}",
        "tls.verify: unknown key (known keys: certificate, private_key, ca, verify_client)",
    ),
    ("tls: server.pem", "tls: expected a mapping with certificate, private_key, ca, verify_client, got 'server.pem'"),
    ("tls: {certificate: server.pem}", "tls.private_key: missing (TLS needs a certificate and a private_key)"),
    ("tls: {certificate: server.pem, private_key: nope.key}", "tls.private_key: file 'TMP/nope.key' does not exist"),
    (
        "tls: {certificate: server.pem, private_key: server.key, verify_client: true}",
        "tls.verify_client: verify_client needs a ca (the CA that client certificates come from)",
    ),
    (
        "tls: {certificate: server.pem, private_key: server.key, ca: ca.pem, verify_client: 'yes'}",
        "tls.verify_client: expected true or false, got 'yes'",
    ),
    ("servables: {name: alpha}", "servables: expected a list of servables, got {'name': 'alpha'}"),
    ("servables: [7]", "servables[0]: expected a servable name or a mapping of its settings, got 7"),
    ("servables: [{version: 1}]", "servables[0]: missing key 'name'"),
    ("servables: [{name: ''}]", "servables[0].name: expected a non-empty string, got ''"),
    ("servables: [{name: ../alpha}]", "servables[0].name: expected a servable name (a folder name), got '../alpha'"),
    (
        "servables: [delta]",
        "servables[0].name: no servable 'delta' in 'TMP/servables' (no file 'TMP/servables/delta/servable_config.py')",
    ),
    (
        "servables: [not_a_servable]",
        "servables[0].name: no servable 'not_a_servable' in 'TMP/servables' (no file "
        "'TMP/servables/not_a_servable/servable_config.py')",
    ),
    (
        "servables: [{name: alpha, version: 3}]",
        "servables[0].version: servable 'alpha' has no version folder 'TMP/servables/alpha/3'",
    ),
    ("servables: [{name: alpha, version: -1}]", "servables[0].version: expected an int >= 0, got -1"),
    (
        "servables: [alpha, {name: alpha, version: 2}]",
        "servables[1]: servable 'alpha' version 2 is already listed as TMP/serving.yaml: servables[0]",
    ),
    (
        "servables: [{name: alpha, directory: nowhere}]",
        "servables[0].directory: directory 'TMP/nowhere' does not exist",
    ),
    (
        "servables: [{name: alpha, device_type: TPU}]",
        "servables[0].device_type: expected CPU, GPU, Ascend or null, got 'TPU'",
    ),
    (
        "servables: [{name: alpha, max_batch_size: -1}]",
        "servables[0].max_batch_size: expected an int in [0, 1048576], got -1",
    ),
    (
        "servables: [{name: alpha, max_batch_delay_ms: fast}]",
        "servables[0].max_batch_delay_ms: expected a number in [0, 60000], got 'fast'",
    ),
    ("servables: [{name: alpha, shm_size_mb: 1}]", "servables[0].shm_size_mb: expected an int in [4, 1048576], got 1"),
    ("servable_directory: nowhere", "servable_directory: directory 'TMP/nowhere' does not exist"),
    ("servable_directory: 5", "servable_directory: expected a non-empty string, got 5"),
    ("grpc_address: localhost", "grpc_address: expected 'host:port' or 'unix:/path', got 'localhost'"),
    ("grpc_address: 'localhost:99999'", "grpc_address: expected 'host:port' or 'unix:/path', got 'localhost:99999'"),
    ("rest_address: 'unix:'", "rest_address: expected 'host:port' or 'unix:/path', got 'unix:'"),
    ("rest_address: true", "rest_address: expected 'host:port' or 'unix:/path', got True"),
    ("rest_address: 127.0.0.1:5500", "rest_address: the same address as grpc_address (127.0.0.1:5500)"),
    ("max_msg_mb_size: 513", "max_msg_mb_size: expected an int in [1, 512], got 513"),
    ("max_msg_mb_size: 1.5", "max_msg_mb_size: expected an int in [1, 512], got 1.5"),
    ("max_enqueued_requests: 0", "max_enqueued_requests: expected an int >= 1, got 0"),
    ("max_request_instances: -3", "max_request_instances: expected an int >= 1, got -3"),
    ("max_stream_memory_mb: 0", "max_stream_memory_mb: expected an int in [1, 1048576], got 0"),
    ("max_stream_memory_mb: '64'", "max_stream_memory_mb: expected an int in [1, 1048576], got '64'"),
]


@pytest.mark.parametrize("yaml_text, message", FILE_ERRORS)
def test_file_errors_name_the_file_and_the_key(tree, yaml_text, message):
    assert error_of(tree, yaml_text + "\n") == f"TMP/serving.yaml: {message}"


def test_file_level_errors(tree):
    assert (
        error_of(tree, "- a\n- b\n") == "TMP/serving.yaml: expected a mapping of settings at the top level, "
        "got ['a', 'b']"
    )
    assert (
        error_of(tree, "grpc_address: a:1\ngrpc_address: b:2\n")
        == "TMP/serving.yaml: invalid YAML at line 2, column 1: duplicate key 'grpc_address'"
    )
    assert (
        error_of(tree, "servables: [alpha\n")
        == "TMP/serving.yaml: invalid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'"
    )
    assert (
        error_of(tree, "grpc_address: null\nrest_address: null\n")
        == "grpc_address and rest_address are both off: nothing would answer requests"
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(tree / "missing.yaml"), environ={}, cwd=str(tree))
    assert str(info.value) == f"{tree}/missing.yaml: cannot read the file: No such file or directory"


ENVIRONMENT_ERRORS = [
    ({"MINDSERVE_DEVICE_IDS": "0,x"}, "MINDSERVE_DEVICE_IDS: expected a list of non-negative ints, got '0,x'"),
    ({"MINDSERVE_DEVICE_TYPE": "tpu"}, "MINDSERVE_DEVICE_TYPE: expected CPU, GPU, Ascend or null, got 'tpu'"),
    ({"MINDSERVE_GRPC_ADDRESS": "5500"}, "MINDSERVE_GRPC_ADDRESS: expected 'host:port' or 'unix:/path', got '5500'"),
    ({"MINDSERVE_MAX_MSG_MB_SIZE": "big"}, "MINDSERVE_MAX_MSG_MB_SIZE: expected an int in [1, 512], got 'big'"),
    ({"MINDSERVE_MAX_ENQUEUED_REQUESTS": "-3"}, "MINDSERVE_MAX_ENQUEUED_REQUESTS: expected an int >= 1, got -3"),
    (
        {"MINDSERVE_MAX_STREAM_MEMORY_MB": "lots"},
        "MINDSERVE_MAX_STREAM_MEMORY_MB: expected an int in [1, 1048576], got 'lots'",
    ),
    ({"MINDSERVE_SERVABLES": "alpha,,beta"}, "MINDSERVE_SERVABLES: expected a non-empty string, got ''"),
    (
        {"MINDSERVE_SERVABLES": "zeta"},
        "MINDSERVE_SERVABLES: no servable 'zeta' in 'TMP/servables' (no file 'TMP/servables/zeta/servable_config.py')",
    ),
    (
        {"MINDSERVE_SERVABLE_DIRECTORY": "nowhere"},
        "MINDSERVE_SERVABLE_DIRECTORY: directory 'TMP/work/nowhere' does not exist",
    ),
    (
        {"MINDSERVE_TLS_CERTIFICATE": "../server.pem"},
        "MINDSERVE_TLS_PRIVATE_KEY: missing (TLS needs a certificate and a private_key)",
    ),
    (
        {
            "MINDSERVE_TLS_CERTIFICATE": "../server.pem",
            "MINDSERVE_TLS_PRIVATE_KEY": "../server.key",
            "MINDSERVE_TLS_VERIFY_CLIENT": "maybe",
        },
        "MINDSERVE_TLS_VERIFY_CLIENT: expected true or false, got 'maybe'",
    ),
    (
        {"MINDSERVE_GRPC_ADDRESS": "off", "MINDSERVE_REST_ADDRESS": "Off"},
        "grpc_address and rest_address are both off: nothing would answer requests",
    ),
]


@pytest.mark.parametrize("environ, message", ENVIRONMENT_ERRORS)
def test_environment_errors_name_the_variable(tree, environ, message):
    assert error_of(tree, environ=environ) == message


def test_option_errors_name_the_option(tree):
    assert (
        error_of(tree, options={"rest_address": "nohost"})
        == "--rest-address: expected 'host:port' or 'unix:/path', got 'nohost'"
    )
    assert (
        error_of(tree, options={"servable_directory": "nowhere"})
        == "--servable-directory: directory 'TMP/work/nowhere' does not exist"
    )
