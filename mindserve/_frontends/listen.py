"""Listening addresses shared by every server of the master (gRPC, REST, metrics): ``host:port`` or
``unix:/path``, owner-only unix socket files, and the PEM files of TLS, with one set of error texts."""

from __future__ import annotations

import os
import socket
import stat
from typing import Optional

UNIX_PREFIX = "unix:"


def unix_socket_path(address: str) -> Optional[str]:
    """The file of a ``unix:`` address (``unix:/abs``, ``unix:///abs`` or ``unix:relative``), else None."""
    if not address.startswith(UNIX_PREFIX):
        return None
    path = address[len(UNIX_PREFIX) :]
    if path.startswith("//"):
        path = path[2:]
    return path


def check_address(address: str) -> None:
    """RuntimeError naming the problem unless ``address`` is ``host:port`` (port 0 to 65535) or ``unix:/path``."""
    if not isinstance(address, str) or not address:
        raise RuntimeError(f"Parameter 'address' should be a non-empty str, but actually {address!r}")
    if address.startswith("unix-abstract:"):
        raise RuntimeError(
            "unix-abstract: addresses are not supported: they cannot be protected by file permissions; use unix:/path"
        )
    if address.startswith(UNIX_PREFIX):
        if not unix_socket_path(address):
            raise RuntimeError(f"the unix socket address '{address}' has no path")
    else:
        host, _, port = address.rpartition(":")
        if not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
            raise RuntimeError(f"the address '{address}' should be 'host:port' or 'unix:/path'")


def host_port(address: str) -> tuple[str, int]:
    """The host (an IPv6 host without its brackets) and port of a ``host:port`` address."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # [::1]:1500
    if not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise RuntimeError(f"the address '{address}' should be 'host:port' or 'unix:/path'")
    return host, int(port)


def read_pem(path: str, what: str) -> bytes:
    """The bytes of a TLS file (``what``: "certificate", "private key", "CA certificate"); a missing or unreadable
    file fails with the same text on every transport."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise RuntimeError(f"cannot read the {what} file '{path}': {exc.strerror}") from None


def unix_socket(path: str, what: str) -> socket.socket:
    """A listening-ready unix socket at ``path``, owner-only: the umask applies while bind creates the file (the
    umask is process-wide, so the window is kept to the bind call) and chmod makes it certain. A stale socket file
    is replaced, as gRPC does; any other file at the path is an error (``what`` names the server in it)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"{what} failed to listen on unix:{path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return sock


def remove_socket_file(path: str) -> None:
    """Remove a server's socket file at stop (gone already: nothing to do)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
