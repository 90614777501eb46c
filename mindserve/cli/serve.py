"""``mindserve serve``: start the servables and the servers of a :class:`ServeConfig`, say where it listens and
what is ready, and serve until SIGINT or SIGTERM, then stop cleanly (exit code 0)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Optional, TextIO

from mindserve.cli.config import ServeConfig

if TYPE_CHECKING:  # the server side is imported only once serving starts
    from mindserve._master import Master

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# errors that starting may raise with a text meant for the user (a bad servable_config.py, a busy port, a
# missing extra); anything else is a bug and keeps its traceback
START_ERRORS = (RuntimeError, OSError, ImportError, ValueError)


class _StopSignals:
    """SIGINT / SIGTERM handlers for the serving process.

    A signal only records itself: the main thread stops the server in its own time, never inside a handler.
    While starting, the first signal waits for the start to finish (workers half started would be left
    behind otherwise); a second one aborts the start with KeyboardInterrupt.
    """

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.starting = True

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and self.starting:
            raise KeyboardInterrupt
        self.received = signum

    def wait(self, stopped: threading.Event) -> None:
        """Return once a stop signal came (or the server stopped by itself)."""
        while self.received is None and not stopped.is_set():
            time.sleep(0.2)  # signals interrupt the sleep; their handlers run in this thread


def _say(out: TextIO, line: str) -> None:
    print(line, file=out, flush=True)


def _ready_lines(config: ServeConfig, servables: list) -> list[str]:
    lines = []
    for name, version, directory, device_ids, methods, python_workers in servables:
        devices = ", ".join(str(i) for i in device_ids)
        plural = "s" if len(device_ids) > 1 else ""
        lines.append(
            f"servable {name} version {version} from {os.path.join(directory, name)} on device{plural} "
            f"{devices}: methods {', '.join(methods)}"
        )
        if python_workers:  # num_parallel_workers past the device workers
            lines.append(
                f"servable {name} version {version}: {len(python_workers)} Python-stage worker process"
                f"{'es' if len(python_workers) > 1 else ''} (pid {', '.join(python_workers)}) beside the "
                f"device worker{plural}"
            )
    tls = " (TLS)" if config.tls else ""
    if config.grpc_address:
        lines.append(f"gRPC listening on {config.grpc_address}{tls}")
    if config.rest_address:
        rest = config.rest_address
        if not rest.startswith("unix:"):
            rest = f"{'https' if config.tls else 'http'}://{rest}"
        lines.append(f"REST listening on {rest}")
    if config.metrics_address:
        metrics = config.metrics_address
        if not metrics.startswith("unix:"):
            metrics = f"{'https' if config.tls else 'http'}://{metrics}/metrics"
        lines.append(f"metrics on {metrics}")
    lines += _what_is_on(config)
    lines.append("ready; Ctrl-C or SIGTERM stops it")
    return lines


def _what_is_on(config: ServeConfig) -> list[str]:
    """What is on that a client or an operator meets at once: the groups access control guards, and clients'
    shared memory. (Nothing is said of what is off, the defaults.)"""
    lines = []
    if config.access is not None:
        from mindserve._access.groups import GROUPS, METRICS
        from mindserve._access.policy import AccessPolicy

        access = config.access
        policy = AccessPolicy(access)
        guarded = [group for group in GROUPS if policy.guards(group)]
        ways = [
            way
            for way, on in (
                ("keys", access.restricted),
                ("bearer tokens", access.jwt),
                ("client certificates", access.client_certificates),
                ("consumers' tokens", access.consumers),
            )
            if on
        ]
        open_groups = [group for group in GROUPS if group not in guarded]
        lines.append(
            f"access control: {', '.join(guarded) or 'no group'} guarded ({', '.join(ways)})"
            + (f"; open: {', '.join(open_groups)}" if open_groups else "")
        )
        if config.metrics_address and METRICS in guarded:
            lines.append(
                "metrics need credentials too: give the scraper a token or key (access: in serving.yaml, "
                "MINDSERVE_AUTH_*)"
            )
    if config.allow_client_shm:
        owners = ", ".join(str(owner) for owner in config.client_shm_owners)
        lines.append(
            "client shared memory: on (Triton's regions, MindSpore's shm_data, media-stream frames), files "
            "of this user" + (f" and of {owners}" if owners else "")
        )
    return lines


def serve(config: ServeConfig, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    """Serve ``config`` until SIGINT or SIGTERM; the exit code: 0 after a signal, 1 when starting failed (the
    reason printed on ``err``, everything started so far stopped again)."""
    from mindserve import server
    from mindserve._master import get_master

    out = out or sys.stdout
    err = err or sys.stderr

    # The master installs signal handlers that stop it and then re-raise the signal's default action (a
    # KeyboardInterrupt, or death by SIGTERM); this command replaces them once the master exists, so that a
    # signal means "stop cleanly and exit 0".
    logging.getLogger("mindserve").setLevel(config.log_level.upper())  # (kept by the server's own set-up)
    master = get_master()
    signals = _StopSignals()
    signals.install()
    try:
        server.context.set_max_enqueued_requests(config.max_enqueued_requests)
        server.context.set_max_request_instances(config.max_request_instances)
        server.context.set_max_stream_memory_mb(config.max_stream_memory_mb)
        if config.client_shm_owners:
            server.context.set_client_shm_owners(list(config.client_shm_owners))
        server.start_servables(
            [
                server.ServableStartConfig(
                    servable_directory=s.directory,
                    servable_name=s.name,
                    device_ids=s.device_ids,
                    version_number=s.version,
                    device_type=s.device_type,
                    max_batch_size=s.max_batch_size,
                    max_batch_delay_ms=s.max_batch_delay_ms,
                    shm_size_mb=s.shm_size_mb,
                    num_parallel_workers=s.num_parallel_workers,
                    max_queue_delay_ms=s.max_queue_delay_ms,
                )
                for s in config.servables
            ]
        )
        ssl_config = None
        if config.tls:
            ssl_config = server.SSLConfig(
                certificate=config.tls.certificate,
                private_key=config.tls.private_key,
                custom_ca=config.tls.ca,
                verify_client=config.tls.verify_client,
            )
        if config.grpc_address:
            server.start_grpc_server(
                config.grpc_address,
                config.max_msg_mb_size,
                ssl_config,
                access=config.access,
                media_stream=config.media_stream,
                allow_client_shm=config.allow_client_shm,
            )
        if config.rest_address:
            server.start_restful_server(
                config.rest_address,
                config.max_msg_mb_size,
                ssl_config,
                access=config.access,
                allow_client_shm=config.allow_client_shm,
            )
        if config.metrics_address:
            server.start_metrics_server(config.metrics_address, ssl_config, access=config.access)
        started = master.call(_started_servables(master))
    except START_ERRORS as exc:
        _say(err, f"mindserve serve: error: {exc}")
        server.stop()
        return 1
    except BaseException:  # KeyboardInterrupt (a second signal while starting) or a bug: leave nothing behind
        server.stop()
        raise
    signals.starting = False
    if signals.received is None:
        for line in _ready_lines(config, started):
            _say(out, line)
        signals.wait(master.stopped)
    if signals.received is not None:
        _say(out, f"stopping ({signal.Signals(signals.received).name})")
    server.stop()
    _say(out, "stopped")
    return 0


async def _started_servables(master: Master) -> list:
    """(name, version, directory, device ids, method names, pids of the Python-stage workers) of each running
    servable version, read on the master's loop (which owns the dispatcher), in the order they were started."""
    return [
        (
            g.name,
            g.version,
            g.specs[0].servable_directory,
            [s.device_id for s in g.specs],
            list(g.methods),
            [str(w.pid) for w in g.python_workers],
        )
        for g in master.worker_groups
    ]
