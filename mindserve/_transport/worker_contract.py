"""What the master and a worker process say to each other outside the job flow, defined once for both sides:
the worker's command line (``WorkerArgs``: written by supervision, parsed by ``python -m mindserve._workers``)
and the control operations on the control socket (their names and the messages that carry them).

Control messages are JSON headers of mindserve._transport.messages frames:

- worker -> master, once at start: ``ready`` {pid, methods, seldon} or ``failed`` {error};
- master -> worker: ``stats`` {id}, answered worker -> master by ``stats`` {id, stats}.

The ``methods`` of a ready message hold, beside each method's signature, its plan (``stages``: each stage's kind
and the values it uses; ``output_refs``), so that the master can run a method as segments over several
processes (num_parallel_workers) without importing servable code. A segment is a job whose method is named
``segment_name`` (``"<method>#<first>-<last>"``, stages counted from 1) and whose inputs are values named by
``value_name``: a method input by its own name, output ``k`` of stage ``s`` as ``"s.k"``; its reply holds the
values the segment hands on, named alike.
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
    python_only: Optional[int] = None  # 1: one of num_parallel_workers' extra processes (Python stages, no model)

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
            # (annotations are text here)
            kind = {"int": int, "float": float, "Optional[int]": int}.get(str(item.type), str)
            required = item.default is MISSING
            parser.add_argument(
                _option(item.name),
                dest=item.name,
                type=kind,
                required=required,
                default=None if required else item.default,
            )
        return cls(**vars(parser.parse_args(argv)))


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def segment_name(method: str, first: int, last: int) -> str:
    """The job name of stages ``first`` to ``last`` of ``method``."""
    return f"{method}#{first}-{last}"


def parse_segment(name: str) -> Optional[tuple[str, int, int]]:
    """(method, first, last) of a segment's job name; None for a method's own name."""
    method, mark, span = name.rpartition("#")
    first, dash, last = span.partition("-")
    if not mark or not dash or not first.isdigit() or not last.isdigit():
        return None
    return method, int(first), int(last)


def value_name(input_names: Sequence[str], stage: int, index: int) -> str:
    """How a segment job names a value: a method input by its name, output ``index`` of stage ``stage`` as
    ``"stage.index"`` (a method input's name is an identifier, never that)."""
    return input_names[index] if stage == 0 else f"{stage}.{index}"


def value_ref(input_names: Sequence[str], name: str) -> Optional[tuple[int, int]]:
    """The (stage, index) a segment job's value name stands for; None for a name that is neither."""
    if name in input_names:
        return 0, list(input_names).index(name)
    stage, dot, index = name.partition(".")
    if dot and stage.isdigit() and index.isdigit() and int(stage) > 0:
        return int(stage), int(index)
    return None


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
