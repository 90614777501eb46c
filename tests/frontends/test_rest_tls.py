"""HTTPS for the REST frontend with the same SSLConfig as gRPC: one-way TLS (tritonclient.http and plain HTTPS),
mutual TLS on TCP and on a unix socket, and the refusals: a plaintext client, a client without a certificate or
with one from another CA, a client that does not trust the server's CA."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import aiohttp
import numpy as np
import pytest
import tritonclient.http as th

from support.processes import ServerProcess, free_port
from support.rest import request, unix_request
from support.tls import start_tls_server

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

ADD_BODY = {"instances": [{"x1": [[1.0, 2.0], [3.0, 4.0]], "x2": [[1.0, 2.0], [3.0, 4.0]]}]}
ADD_REPLY = {"instances": [{"y": [[2.0, 4.0], [6.0, 8.0]]}]}


@pytest.fixture(scope="module")
def tls_server(tls_files, tmp_path_factory) -> Iterator[ServerProcess]:
    """The bundled add servable behind REST with one-way TLS, mutual TLS, and mutual TLS on a unix socket."""
    tmp = tmp_path_factory.mktemp("rest_tls_server")
    addresses = {"tls": f"127.0.0.1:{free_port()}", "mtls": f"127.0.0.1:{free_port()}"}
    unix_path = f"{tmp}/mtls.sock"
    listeners = {**addresses, "mtls_unix": f"unix:{unix_path}"}
    server = start_tls_server(tmp, tls_files, "start_restful_server", listeners, mutual={"mtls", "mtls_unix"})
    server.addresses = addresses
    server.unix_path = unix_path
    yield server
    server.stop()


def client_context(tls_files, ca: str = "ca.pem", cert: str = "", key: str = "") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls_files[ca])
    if cert:
        context.load_cert_chain(tls_files[cert], tls_files[key])
    return context


def test_one_way_tls(tls_server, tls_files):
    reply = request(
        tls_server.addresses["tls"], "POST", "/model/add:add_common", ADD_BODY, context=client_context(tls_files)
    )
    assert (reply.status, reply.json()) == (200, ADD_REPLY)
    with th.InferenceServerClient(
        tls_server.addresses["tls"], ssl=True, ssl_options={"ca_certs": tls_files["ca.pem"]}
    ) as client:
        assert client.is_server_ready()
        x = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
        inputs = [th.InferInput(name, [1, 2, 2], "FP32") for name in ("x1", "x2")]
        for tensor in inputs:
            tensor.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("add.add_common", inputs).as_numpy("y"), x * 2)


def test_mutual_tls(tls_server, tls_files):
    context = client_context(tls_files, cert="client.pem", key="client.key")
    reply = request(tls_server.addresses["mtls"], "POST", "/model/add:add_common", ADD_BODY, context=context)
    assert (reply.status, reply.json()) == (200, ADD_REPLY)
    unix = f"unix:{tls_server.unix_path}"
    reply = request(unix, "POST", "/model/add:add_common", ADD_BODY, context=context)
    assert (reply.status, reply.json()) == (200, ADD_REPLY)
    assert request(unix, "GET", "/v2/health/ready", context=context).status == 200


# the server ends the connection (with a TLS alert, which may land before or after the client's handshake ends)
REFUSED = (ssl.SSLError, ConnectionError)


@pytest.mark.parametrize(
    "kwargs", [{}, {"cert": "stranger.pem", "key": "stranger.key"}], ids=["no_certificate", "certificate_of_another_ca"]
)
def test_mutual_tls_refuses_clients_without_a_certificate_from_the_ca(tls_server, tls_files, kwargs):
    context = client_context(tls_files, **kwargs)
    with pytest.raises(REFUSED):
        request(tls_server.addresses["mtls"], "GET", "/v2/health/live", context=context)
    with pytest.raises(REFUSED):
        request(f"unix:{tls_server.unix_path}", "GET", "/v2/health/live", context=context)


def test_client_that_does_not_trust_the_server_refuses_it(tls_server, tls_files):
    with pytest.raises(ssl.SSLCertVerificationError):
        request(
            tls_server.addresses["tls"], "GET", "/v2/health/live", context=client_context(tls_files, "other_ca.pem")
        )


@pytest.mark.parametrize("listener", ["tls", "mtls"])
def test_plaintext_client_is_refused(tls_server, listener):
    with pytest.raises(ConnectionError):
        request(tls_server.addresses[listener], "GET", "/v2/health/live")


def test_plaintext_client_on_a_tls_unix_socket_is_refused(tls_server):
    with pytest.raises(aiohttp.ClientConnectionError):
        unix_request(tls_server.unix_path, "GET", "/v2/health/live")
