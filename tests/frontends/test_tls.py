"""TLS and mutual TLS on TCP and unix sockets with real certificates (trustme), refused connections, the message
size limit, start_grpc_server's argument checks and the unix socket file's permissions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import numpy as np
import pytest

from mindserve.client import Client, SSLConfig
from support.paths import BUNDLED_SERVABLES
from support.processes import ServerProcess, free_port, start_server
from support.tls import start_tls_server

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

UNAVAILABLE = "Grpc Error, (14, 'unavailable'), "
RESOURCE_EXHAUSTED = "Grpc Error, (8, 'resource exhausted'), "


def add_instances(count: int = 1) -> list:
    return [{"x1": np.full((2, 2), i, np.float32), "x2": np.ones((2, 2), np.float32)} for i in range(1, count + 1)]


def assert_add_results(result, count: int = 1) -> None:
    assert isinstance(result, list), result
    assert len(result) == count
    for i, item in enumerate(result, start=1):
        assert list(item) == ["y"]
        assert item["y"].dtype == np.float32
        assert item["y"].shape == (2, 2)
        np.testing.assert_array_equal(item["y"], np.full((2, 2), i + 1, np.float32))


def assert_refused(result) -> None:
    assert isinstance(result, dict), result
    assert list(result) == ["error"]
    assert result["error"].startswith(UNAVAILABLE), result


@pytest.fixture(scope="module")
def tls_server(tls_files, tmp_path_factory) -> Iterator[ServerProcess]:
    """The bundled add servable (one worker) behind four TLS listeners: one-way TLS on TCP and on a unix socket,
    mutual TLS on TCP and on a unix socket."""
    tmp = tmp_path_factory.mktemp("tls_server")
    addresses = {
        "tls_tcp": f"127.0.0.1:{free_port()}",
        "tls_unix": f"unix:{tmp}/tls.sock",
        "mtls_tcp": f"127.0.0.1:{free_port()}",
        "mtls_unix": f"unix:{tmp}/mtls.sock",
    }
    server = start_tls_server(tmp, tls_files, "start_grpc_server", addresses, mutual={"mtls_tcp", "mtls_unix"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def small_msg_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """The bundled add servable on a plaintext TCP port with max_msg_mb_size=1."""
    tmp = tmp_path_factory.mktemp("small_msg_server")
    address = f"127.0.0.1:{free_port()}"
    server = start_server(
        tmp,
        f"""
        server.start_servables(server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0))
        server.start_grpc_server({address!r}, max_msg_mb_size=1)
    """,
        address,
    )
    yield server
    server.stop()


def client(address: str, ssl_config=None) -> Client:
    return Client(address, "add", "add_common", ssl_config=ssl_config)


# --- one-way TLS --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_one_way_tls(tls_server, tls_files, transport):
    address = tls_server.addresses[f"tls_{transport}"]
    c = client(address, SSLConfig(custom_ca=tls_files["ca.pem"]))
    assert_add_results(c.infer(add_instances(3)), 3)
    assert_add_results(c.infer(add_instances()[0]))
    assert_add_results(c.infer_async(add_instances(2)).result(timeout=60), 2)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_one_way_tls_client_may_present_a_certificate(tls_server, tls_files, transport):
    """A server that does not ask for client certificates still serves a client that has one."""
    f = tls_files
    c = client(tls_server.addresses[f"tls_{transport}"], SSLConfig(f["client.pem"], f["client.key"], f["ca.pem"]))
    assert_add_results(c.infer(add_instances(2)), 2)


def test_tls_client_that_does_not_trust_the_server_ca_is_refused(tls_server, tls_files):
    c = client(tls_server.addresses["tls_tcp"], SSLConfig(custom_ca=tls_files["other_ca.pem"]))
    assert_refused(c.infer(add_instances()))
    assert_refused(c.infer_async(add_instances()).result(timeout=60))


# --- mutual TLS ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_mutual_tls_client_with_certificate_from_the_ca(tls_server, tls_files, transport):
    f = tls_files
    c = client(tls_server.addresses[f"mtls_{transport}"], SSLConfig(f["client.pem"], f["client.key"], f["ca.pem"]))
    assert_add_results(c.infer(add_instances(3)), 3)
    assert_add_results(c.infer_async(add_instances(1)).result(timeout=60), 1)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_mutual_tls_client_without_certificate_is_refused(tls_server, tls_files, transport):
    c = client(tls_server.addresses[f"mtls_{transport}"], SSLConfig(custom_ca=tls_files["ca.pem"]))
    assert_refused(c.infer(add_instances()))
    assert_refused(c.infer_async(add_instances()).result(timeout=60))


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_mutual_tls_client_with_certificate_from_another_ca_is_refused(tls_server, tls_files, transport):
    f = tls_files
    c = client(tls_server.addresses[f"mtls_{transport}"], SSLConfig(f["stranger.pem"], f["stranger.key"], f["ca.pem"]))
    assert_refused(c.infer(add_instances()))
    assert_refused(c.infer_async(add_instances()).result(timeout=60))


def test_refusals_leave_the_server_serving(tls_server, tls_files):
    f = tls_files
    address = tls_server.addresses["mtls_tcp"]
    for _ in range(3):
        assert_refused(client(address, SSLConfig(custom_ca=f["ca.pem"])).infer(add_instances()))
        assert_refused(client(address).infer(add_instances()))
    assert_add_results(
        client(address, SSLConfig(f["client.pem"], f["client.key"], f["ca.pem"])).infer(add_instances(2)), 2
    )


# --- plaintext and TLS mixed up -----------------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["tls_tcp", "tls_unix", "mtls_tcp", "mtls_unix"])
def test_plaintext_client_on_tls_port_is_refused(tls_server, listener):
    c = client(tls_server.addresses[listener])
    assert_refused(c.infer(add_instances()))
    assert_refused(c.infer_async(add_instances()).result(timeout=60))


def test_tls_client_on_plaintext_port_is_refused(small_msg_server, tls_files):
    f = tls_files
    for ssl_config in (SSLConfig(custom_ca=f["ca.pem"]), SSLConfig(f["client.pem"], f["client.key"], f["ca.pem"])):
        c = client(small_msg_server.address, ssl_config)
        assert_refused(c.infer(add_instances()))
        assert_refused(c.infer_async(add_instances()).result(timeout=60))
    assert_add_results(client(small_msg_server.address).infer(add_instances()))


# --- message size limit -------------------------------------------------------------------------------------------


def test_request_over_the_message_size_limit(small_msg_server):
    c = client(small_msg_server.address)
    big = {"x1": np.ones((300_000,), np.float32), "x2": np.ones((2, 2), np.float32)}  # 1.2 MB > 1 MiB
    for result in (c.infer(big), c.infer_async(big).result(timeout=60)):
        assert isinstance(result, dict), result
        assert list(result) == ["error"]
        assert result["error"].startswith(RESOURCE_EXHAUSTED), result
    # the server keeps serving on the same connection and on new ones
    assert_add_results(c.infer(add_instances(2)), 2)
    assert_add_results(client(small_msg_server.address).infer(add_instances()))


def test_request_under_the_message_size_limit_reaches_the_servable(small_msg_server):
    """A 920000-byte input passes the 1 MiB limit and is judged by the model, not by the transport."""
    c = client(small_msg_server.address)
    result = c.infer({"x1": np.ones((230_000,), np.float32), "x2": np.ones((2, 2), np.float32)})
    # the only instance failed: the whole request failed with its error
    assert result == {
        "error": "Given model input 0 size 920000 not match the size 16 defined in model: input 'x1' of "
        "model tensor_add.onnx takes float32 [2, 2], given float32 [230000]"
    }


# --- unix socket file ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["tls_unix", "mtls_unix"])
def test_unix_socket_file_is_owner_only(tls_server, listener):
    path = tls_server.addresses[listener][len("unix:") :]
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert os.stat(path).st_uid == os.getuid()


# --- argument checks ----------------------------------------------------------------------------------------------

CHECK_SCRIPT = r"""
import json
import threading
from mindserve import server

results = {}


def attempt(key, call):
    try:
        call()
    except RuntimeError as exc:
        results[key] = str(exc)
    else:
        results[key] = None


one_way = server.SSLConfig(CERT, KEY)
attempt("mb0", lambda: server.start_grpc_server(ADDRESS, max_msg_mb_size=0))
attempt("mb513", lambda: server.start_grpc_server(ADDRESS, max_msg_mb_size=513))
attempt("mb-1", lambda: server.start_grpc_server(ADDRESS, max_msg_mb_size=-1))
attempt("mb_str", lambda: server.start_grpc_server(ADDRESS, max_msg_mb_size="1"))
attempt("mb_bool", lambda: server.start_grpc_server(ADDRESS, max_msg_mb_size=True))
attempt("ssl_str", lambda: server.start_grpc_server(ADDRESS, ssl_config="x"))
attempt("ssl_client_config", lambda: server.start_grpc_server(ADDRESS, ssl_config=CLIENT_SSL))
attempt("verify_without_ca", lambda: server.SSLConfig(CERT, KEY, verify_client=True))
attempt("verify_not_bool", lambda: server.SSLConfig(CERT, KEY, custom_ca=CA, verify_client=1))
attempt("cert_empty", lambda: server.SSLConfig("", KEY))
attempt("key_int", lambda: server.SSLConfig(CERT, 5))
attempt("address_empty", lambda: server.start_grpc_server(""))
attempt("address_abstract", lambda: server.start_grpc_server("unix-abstract:mindserve"))
attempt("address_no_port", lambda: server.start_grpc_server("localhost"))
attempt("address_bad_port", lambda: server.start_grpc_server("localhost:abc"))
attempt("address_port_too_big", lambda: server.start_grpc_server("127.0.0.1:65536"))
attempt("address_no_host", lambda: server.start_grpc_server(":5500"))
# none of these may have started anything: the process ends by itself, with no other thread running
results["threads"] = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
print(json.dumps(results))
"""


def test_start_grpc_server_and_ssl_config_argument_checks(tls_files, tmp_path):
    f = tls_files
    header = (
        f"ADDRESS = '127.0.0.1:{free_port()}'\nCERT = {f['server.pem']!r}\nKEY = {f['server.key']!r}\n"
        f"CA = {f['ca.pem']!r}\n"
        f"from mindserve.client import SSLConfig as _C\nCLIENT_SSL = _C(custom_ca=CA)\n"
    )
    script = tmp_path / "checks.py"
    script.write_text(header + textwrap.dedent(CHECK_SCRIPT))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    in_range = "Parameter 'max_msg_mb_size' should be in range [1,512]"
    assert results == {
        "mb0": in_range,
        "mb513": in_range,
        "mb-1": in_range,
        "mb_str": "Parameter 'max_msg_mb_size' should be int, but actually <class 'str'>",
        "mb_bool": "Parameter 'max_msg_mb_size' should be int, but actually <class 'bool'>",
        "ssl_str": "The type of ssl_config should be type of SSLConfig",
        "ssl_client_config": "The type of ssl_config should be type of SSLConfig",
        "verify_without_ca": "Parameter 'custom_ca' should be given when 'verify_client' is True",
        "verify_not_bool": "Parameter 'verify_client' should be bool, but actually <class 'int'>",
        "cert_empty": "Parameter 'certificate' should not be empty str",
        "key_int": "Parameter 'private_key' should be str, but actually <class 'int'>",
        "address_empty": "Parameter 'address' should be a non-empty str, but actually ''",
        "address_abstract": "unix-abstract: addresses are not supported: they cannot be protected by file "
        "permissions; use unix:/path",
        "address_no_port": "the address 'localhost' should be 'host:port' or 'unix:/path'",
        "address_bad_port": "the address 'localhost:abc' should be 'host:port' or 'unix:/path'",
        "address_port_too_big": "the address '127.0.0.1:65536' should be 'host:port' or 'unix:/path'",
        "address_no_host": "the address ':5500' should be 'host:port' or 'unix:/path'",
        "threads": [],
    }


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"certificate": "c.pem"}, "The certificate and private_key should be passed at the same time"),
        ({"private_key": "k.pem"}, "The certificate and private_key should be passed at the same time"),
        ({"custom_ca": 3}, "Parameter 'custom_ca' should be str, but actually <class 'int'>"),
        ({"custom_ca": ""}, "Parameter 'custom_ca' should not be empty str"),
    ],
)
def test_client_ssl_config_checks(kwargs, message):
    with pytest.raises(RuntimeError) as info:
        SSLConfig(**kwargs)
    assert str(info.value) == message
