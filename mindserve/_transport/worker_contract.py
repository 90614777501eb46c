"""What the master and a worker process say to each other outside the job flow, defined once for both sides:
the worker's command line (``WorkerArgs``: written by supervision, parsed by ``python -m mindserve._workers``)
and the control operations on the control socket (their names and the messages that carry them).

Control messages are JSON headers of mindserve._transport.messages frames:

- worker -> master, once at start: ``ready`` {pid, methods, seldon} or ``failed`` {error};
- master -> worker: ``stats`` {id}, answered worker -> master by ``stats`` {id, stats}.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, fields
from typing import Any, Optional, Sequence

READY = "ready"
FAILED = "failed"
STATS = "stats"


@dataclass(frozen=True)
class WorkerArgs:
    """The command line of a worker process: its three descriptors (the control socket, the channel segment,
    the master's eventfd) and what it serves, and how it batches."""

    control_fd: int
    shm_fd: int
    event_fd: int
    servable_directory: str
    name: str
    version: int
    device_id: int
    device_type: Optional[str] = None
    max_batch_size: int = 0
    max_batch_delay_ms: float = 0.0

    def to_argv(self) -> list[str]:
        """The arguments after ``python -m mindserve._workers``."""
        argv = []
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None:
                argv += [_option(item.name), str(value)]
        return argv

    @classmethod
    def from_argv(cls, argv: Optional[Sequence[str]] = None) -> "WorkerArgs":
        """The arguments as ``to_argv`` wrote them (``sys.argv[1:]`` when None); argparse's usage error (exit
        code 2) for anything else."""
        parser = argparse.ArgumentParser(prog="python -m mindserve._workers")
        for item in fields(cls):
            kind = {"int": int, "float": float}.get(str(item.type), str)  # (annotations are text here)
            required = item.default is MISSING
            parser.add_argument(_option(item.name), dest=item.name, type=kind, required=required,
                                default=None if required else item.default)
        return cls(**vars(parser.parse_args(argv)))


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def ready_message(pid: int, methods: dict[str, Any], seldon: Optional[dict]) -> dict[str, Any]:
    """The worker has loaded its servable: its pid, its methods' signatures, how it answers Seldon."""
    return {"op": READY, "pid": pid, "methods": methods, "seldon": seldon}


def failed_message(error: str) -> dict[str, Any]:
    """The worker could not load its servable, and why."""
    return {"op": FAILED, "error": error}


def stats_request(asked_id: int) -> dict[str, Any]:
    return {"op": STATS, "id": asked_id}


def stats_reply(asked_id: Any, stats: dict[str, Any]) -> dict[str, Any]:
    return {"op": STATS, "id": asked_id, "stats": stats}
