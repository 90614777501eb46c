"""Entry point of a worker process, started by the master:

    python -m mindserve._workers --fd FD --servable-directory DIR --name NAME --version N --device-id ID
                                 [--device-type TYPE]

FD is the worker's end of a connected stream socket. The worker loads the servable, reports ``ready`` (or
``failed`` with the reason) and then answers ``run`` frames in order until the master sends ``exit`` or goes
away; it never outlives the master.
"""
from __future__ import annotations

import argparse
import os
import queue
import signal
import socket
import threading

from mindserve._errors import SYSTEM_ERROR, ServingError
from mindserve._transport import messages
from mindserve._transport.worker_side import WorkerChannel
from mindserve._workers.executor import MethodExecutor
from mindserve._workers.loader import load_servable, method_signatures


def _read_frames(channel: WorkerChannel, jobs: queue.Queue) -> None:
    """Reader thread: hand frames to the main thread; end the process at once when the master is gone, even
    while a long model run is in progress."""
    while True:
        frame = channel.recv()
        if frame is None:
            os._exit(0)
        jobs.put(frame)
        if frame[0].get("op") == "exit":
            return


def _run_job(executor: MethodExecutor, header: dict, payload: bytearray) -> tuple[dict, list]:
    reader = messages.PayloadReader(payload)
    instances = [reader.take_values(descs) for descs in header["instances"]]
    try:
        outcomes = executor.run(header["method"], instances)
    except Exception as exc:  # a defect of the worker itself: fail the job, keep serving
        outcomes = [ServingError(SYSTEM_ERROR, f"worker error: {exc}")] * len(instances)
    buffers: list = []
    results = []
    for outcome in outcomes:
        if isinstance(outcome, ServingError):
            results.append({"error": [outcome.code, outcome.message]})
        else:
            results.append({"outputs": messages.pack_values(outcome, buffers)})
    return {"op": "done", "id": header["id"], "results": results}, buffers


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mindserve._workers")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--servable-directory", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--device-id", type=int, required=True)
    parser.add_argument("--device-type", default=None)
    args = parser.parse_args()
    # Ctrl-C, or a SIGTERM sent to the whole process group, is the master's to handle: it drains the requests
    # in progress and then tells each worker to exit (a worker also exits as soon as the master is gone).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    channel = WorkerChannel(socket.socket(fileno=args.fd))
    try:
        executor = load_servable(args.servable_directory, args.name, args.version, args.device_type, args.device_id)
    except Exception as exc:
        channel.send({"op": "failed", "error": str(exc)})
        channel.close()
        raise SystemExit(1)
    channel.send({"op": "ready", "pid": os.getpid(), "methods": method_signatures(executor)})

    jobs: queue.Queue = queue.Queue()
    threading.Thread(target=_read_frames, args=(channel, jobs), daemon=True, name="frames").start()
    while True:
        header, payload = jobs.get()
        if header.get("op") == "exit":
            break
        reply, buffers = _run_job(executor, header, payload)
        channel.send(reply, buffers)
    channel.close()


if __name__ == "__main__":
    main()
