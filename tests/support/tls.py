"""TLS for the tests: certificates made by trustme, and the bundled add servable behind TLS listeners."""

from __future__ import annotations

import pathlib

from support.paths import BUNDLED_SERVABLES
from support.processes import ServerProcess, start_server


def make_tls_files(root: pathlib.Path) -> dict:
    """PEM files in ``root``: a CA and a server certificate for localhost/127.0.0.1, a client certificate from the
    same CA, and a second CA with its own client certificate (for the refused cases); their paths by file name."""
    import trustme

    ca = trustme.CA()
    other_ca = trustme.CA()
    server_cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    client_cert = ca.issue_cert("client@mindserve.test")
    stranger_cert = other_ca.issue_cert("stranger@mindserve.test")
    files = {}

    def dump(name: str, blob) -> None:
        path = root / name
        blob.write_to_path(str(path))
        files[name] = str(path)

    dump("ca.pem", ca.cert_pem)
    dump("other_ca.pem", other_ca.cert_pem)
    dump("server.pem", server_cert.cert_chain_pems[0])
    dump("server.key", server_cert.private_key_pem)
    dump("client.pem", client_cert.cert_chain_pems[0])
    dump("client.key", client_cert.private_key_pem)
    dump("stranger.pem", stranger_cert.cert_chain_pems[0])
    dump("stranger.key", stranger_cert.private_key_pem)
    return files


def start_tls_server(tmp: pathlib.Path, tls_files: dict, start: str, addresses: dict, mutual) -> ServerProcess:
    """The bundled add servable (one worker) behind TLS listeners, one per item of ``addresses`` (name -> address),
    started in that order by ``server.<start>`` ("start_grpc_server" or "start_restful_server"): mutual TLS (the
    client must present a certificate from tls_files' CA) for the names in ``mutual``, one-way TLS for the others.
    The server is waited for on the first address; ``server.addresses`` is ``addresses``."""
    f = tls_files
    starts = "".join(
        f"        server.{start}({address!r}, ssl_config={'mutual' if name in mutual else 'one_way'})\n"
        for name, address in addresses.items()
    )
    server = start_server(
        tmp,
        f"""
        one_way = server.SSLConfig({f["server.pem"]!r}, {f["server.key"]!r})
        mutual = server.SSLConfig({f["server.pem"]!r}, {f["server.key"]!r}, custom_ca={f["ca.pem"]!r},
                                  verify_client=True)
        server.start_servables(server.ServableStartConfig({BUNDLED_SERVABLES!r}, "add", device_ids=0))
{starts}""",
        next(iter(addresses.values())),
    )
    server.addresses = addresses
    return server
