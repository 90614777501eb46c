"""The handle that ``server.start_grpc_server`` and ``server.start_restful_server`` return."""

from __future__ import annotations

import threading
from typing import Any, Optional


class ServerHandle:
    """A started server: ``address`` is where it listens (with the port it bound when 0 was asked), ``port`` that
    port (None for a ``unix:`` socket). ``stop()`` stops this server alone, letting its calls in progress finish;
    as a context manager it stops at the end of the block. ``server.stop()`` stops every server and worker."""

    def __init__(self, kind: str, master: Any, server: Any):
        self.kind = kind
        self.address: str = server.address
        self.port: Optional[int] = server.port
        self._master = master
        self._server = server
        self._stopped = threading.Event()

    def stop(self) -> None:
        """Stop this server (nothing happens when it, or the whole master, has stopped already)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if not self._master.stopped.is_set():
            self._master.call(self._master.stop_server(self._server))

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{self.kind} server on {self.address}{' (stopped)' if self._stopped.is_set() else ''}>"
