"""Reading jobs out of the request arena and writing replies into the reply arena (the worker's side of the
message blocks of mindserve._transport.blocks)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from mindserve import _dtypes
from mindserve._errors import SYSTEM_ERROR, ServingError
from mindserve._transport import blocks, jobs
from mindserve._transport.shm_channel import REPLIES, REQUESTS, ArenaFull, MessageTooBig, ShmChannel
from mindserve._workers.columns import Column
from mindserve._workers.executor import to_output_value

ARENA_WAIT_S = 0.001  # the master frees replies as soon as it reads them: a full arena clears quickly


@dataclass
class Job:
    id: int
    method: str
    count: int
    inputs: dict[str, Column]


def read_job(channel: ShmChannel, job_id: int, offset: int, size: int) -> Job:
    """The job in a request block: its method and one column per input, as arrays over the arena (no copy).
    Raises BlockError when the block does not describe itself."""
    if not channel.contains(REQUESTS, offset, size):
        raise blocks.BlockError("job entry reaches outside the request arena")
    reader = blocks.BlockReader(channel.view, offset, size)
    checked = jobs.job_header(reader.header)
    if checked is None:
        raise blocks.BlockError("bad job header")
    method, count, inputs = checked
    columns = {}
    for name, desc in inputs.items():
        column = reader.column(desc, count)
        if isinstance(column, list):
            columns[name] = Column.of_values([reader.value(*d) for d in column])
        else:
            code, shape, position = column
            columns[name] = Column([reader.array(code, (count, *shape), position)])
    return Job(job_id, method, count, columns)


def _stacked_output(column: Column) -> Optional[tuple[list[np.ndarray], tuple, int]]:
    kind = column.stacked_type()
    if kind is None or _dtypes.CODE_OF.get(kind[0]) is None:
        return None
    return [np.ascontiguousarray(p) for p in column.chunks], kind[1], _dtypes.CODE_OF[kind[0]]


def reply_block(
    method: str,
    count: int,
    outputs: dict[str, Column],
    errors: list[Optional[ServingError]],
    failure: Optional[Callable[[str, Any], str]] = None,
) -> tuple[blocks.BlockWriter, dict]:
    """The reply to one job of ``count`` instances: outputs stacked where every instance succeeded and the
    column is stacked, else one value per successful instance; errors as [index, code, message]. A value that
    cannot cross to the master fails its instance with the text ``failure(output name, value)`` (by default that
    of a method output of an unsupported type)."""
    errors = list(errors)
    stacked: dict[str, tuple] = {}
    values: dict[str, list] = {}
    for name, column in outputs.items():
        ready = _stacked_output(column) if not any(errors) else None
        if ready is not None:
            stacked[name] = ready
            continue
        rows = column.rows()
        converted: list = [None] * count
        for i, value in enumerate(rows):
            if errors[i] is not None:
                continue
            try:
                converted[i] = to_output_value(value)
            except TypeError as exc:
                errors[i] = ServingError(
                    SYSTEM_ERROR,
                    failure(name, value) if failure is not None else f"Method '{method}' output '{name}': {exc}",
                )
        values[name] = converted
    if stacked and any(errors):  # an output value failed to convert: report the others per instance too
        for name, (pieces, _, _) in stacked.items():
            values[name] = [to_output_value(v) for v in Column(list(pieces)).rows()]
        stacked = {}
    writer = blocks.BlockWriter()
    out: dict[str, list] = {}
    for name, (pieces, row_shape, code) in stacked.items():
        out[name] = blocks.stacked_descriptor(writer, pieces, row_shape, code)
    for name, column_values in values.items():
        out[name] = ["e", [blocks.value_descriptor(writer, v) for v, err in zip(column_values, errors) if err is None]]
    return writer, {"n": count, "err": jobs.error_entries(errors), "out": out}


def notify(event_fd: int) -> None:
    """Wake the master to take the completions queued since its last wake-up."""
    try:
        os.eventfd_write(event_fd, 1)
    except BlockingIOError:  # the counter is saturated: a wake-up is pending anyway
        pass


def send_reply(
    channel: ShmChannel, event_fd: int, job_id: int, writer: blocks.BlockWriter, header: dict, wake: bool = True
) -> None:
    """Write a reply block and queue its completion, waking the master unless ``wake`` is False (the caller
    then calls ``notify`` once for several replies)."""
    head, size = writer.encode(header)
    send_encoded(channel, event_fd, job_id, header["n"], writer, head, size, wake)


def send_encoded(
    channel: ShmChannel,
    event_fd: int,
    job_id: int,
    count: int,
    writer: blocks.BlockWriter,
    head: bytes,
    size: int,
    wake: bool = False,
) -> None:
    """``send_reply`` for a header already encoded (``head`` and ``size`` as ``writer.encode`` gives them) for a
    job of ``count`` instances. While the reply arena is full it wakes the master, which frees reply blocks as
    it takes them, and waits."""
    while True:
        try:
            offset = channel.alloc(REPLIES, size)
            break
        except ArenaFull:
            notify(event_fd)  # replies queued without a wake-up hold the space this one needs
            time.sleep(ARENA_WAIT_S)
        except MessageTooBig:
            limit = channel.max_message(REPLIES)
            error = ServingError(
                SYSTEM_ERROR,
                f"the outputs of the request ({size} bytes) exceed the worker's "
                f"shared memory for replies ({limit} bytes); raise shm_size_mb",
            )
            send_error(channel, event_fd, job_id, count, error, wake)
            return
    writer.write(channel.view, offset, head)
    channel.push_done(job_id, offset, size, event_fd if wake else -1)


def send_error(
    channel: ShmChannel, event_fd: int, job_id: int, count: int, error: ServingError, wake: bool = True
) -> None:
    """Fail every instance of a job with ``error``."""
    writer = blocks.BlockWriter()
    send_reply(
        channel, event_fd, job_id, writer, {"n": count, "err": jobs.error_entries([error] * count), "out": {}}, wake
    )
