"""The gRPC server of the master: one grpc.aio server per address, TCP ``host:port`` or ``unix:/path``, with
optional TLS / mutual TLS and a message size limit."""

from __future__ import annotations

import errno
import os
import socket
from typing import Optional, Sequence

import grpc

from mindserve._config import SSLConfig
from mindserve._frontends.listen import read_pem, remove_socket_file, unix_socket_path

METADATA_LIMIT = 16 << 10


def server_credentials(ssl_config: SSLConfig) -> grpc.ServerCredentials:
    key = read_pem(ssl_config.private_key, "private key")
    cert = read_pem(ssl_config.certificate, "certificate")
    ca = read_pem(ssl_config.custom_ca, "CA certificate") if ssl_config.custom_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ssl_config.verify_client
    )


def _check_port_free(address: str) -> None:
    """Bind a TCP address once ourselves before gRPC does: a busy port is then our one-line error, not gRPC's C++
    log lines on stderr before it. (gRPC binds again just after; a port taken in between still fails there.)"""
    host, _, port = address.rpartition(":")
    if int(port) == 0:
        return
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # gRPC resolves it and says why it cannot
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            # as gRPC binds: a port left in TIME_WAIT by a server just stopped is free, one that listens is not
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise RuntimeError(
                        f"gRPC server failed to listen on {address}: the address is already in use"
                    ) from None
                return  # anything else (no such interface, ...): gRPC reports it


class GrpcServer:
    """A started gRPC server listening on one address (``address`` holds the port bound when 0 was asked;
    ``port`` is None for a unix socket)."""

    def __init__(self, server: grpc.aio.Server, address: str, port: Optional[int] = None):
        self.server = server
        self.address = address
        self.port = port
        self.socket_path = unix_socket_path(address)

    @classmethod
    async def start(
        cls,
        address: str,
        handlers: Sequence[grpc.GenericRpcHandler],
        max_msg_mb_size: int,
        ssl_config: Optional[SSLConfig],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> "GrpcServer":
        limit = max_msg_mb_size << 20
        server = grpc.aio.server(
            interceptors=tuple(interceptors),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),  # a second server on a busy port must fail, not share it
                # one metadata limit, not gRPC's default pair (8 KiB soft, 16 KiB hard, refusing at random between):
                # credentials up to 16 KiB reach the access check, which answers them alike; larger ones are refused
                # by gRPC itself with RESOURCE_EXHAUSTED
                ("grpc.max_metadata_size", METADATA_LIMIT),
                ("grpc.absolute_max_metadata_size", METADATA_LIMIT),
            ],
        )
        server.add_generic_rpc_handlers(tuple(handlers))
        credentials = server_credentials(ssl_config) if ssl_config else None
        socket_path = unix_socket_path(address)
        if socket_path is None:
            _check_port_free(address)
        # A unix socket is created with owner-only permissions: the umask applies while gRPC binds it (the
        # umask is process-wide, so this window is kept to the bind call), and chmod makes it certain.
        old_umask = os.umask(0o177) if socket_path else None
        try:
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"gRPC server failed to listen on {address}: {exc}") from None
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if not port:
            raise RuntimeError(f"gRPC server failed to listen on {address}")
        await server.start()
        if socket_path:
            if os.path.exists(socket_path):
                os.chmod(socket_path, 0o600)
            return cls(server, address)
        return cls(server, f"{address.rpartition(':')[0]}:{port}", port)  # (the port bound, for port 0)

    async def stop(self, grace: float) -> None:
        """Stop taking new calls, let calls in progress finish within ``grace`` seconds, remove the socket file."""
        await self.server.stop(grace)
        if self.socket_path:
            remove_socket_file(self.socket_path)
