"""The format of the messages between master and worker, in one place: what a job block and a reply block say
(see mindserve._transport.blocks for how a block lays out a header and tensor columns), written and read by
both sides, each in a general form and a fast form for the common case, side by side so that they agree.

- A job: ``{"m": method, "n": instances, "in": {input: column}}``. The master writes it (``encode_job``; a
  stacked request's header once per kind); the worker reads it in general (mindserve._workers.job_io.read_job,
  through ``job_header``) or, when every column is stacked, as a cached ``JobKind`` (``job_kind``, the fast lane).
- A reply: ``{"n": instances, "err": error entries, "out": {output: column}}``; error entries are
  ``[index, code, message]``, or ``[first, code, message, last]`` for a run of instances that failed alike
  (``error_entries``). The master reads it (``decode_reply``) whole when every instance succeeded with stacked
  outputs (``stacked_reply``, a cached kind), else per instance.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, Union

from mindserve._errors import ServingError, from_worker
from mindserve._tensor import RawTensor, StackedInputs, StackedOutput, StackedResults
from mindserve._transport import blocks

# ------------------------------------------------------------------------------------------------------ jobs


def encode_job(writer: blocks.BlockWriter, method: str, instances: Sequence[dict[str, RawTensor]]) -> tuple[bytes, int]:
    """Place a job's tensors in ``writer``; its encoded header and block size (the master's side)."""
    if isinstance(instances, StackedInputs):
        return _stacked_job_head(writer, method, instances)
    names = list(instances[0])
    columns = {n: blocks.raw_column(writer, [inst[n] for inst in instances]) for n in names}
    return writer.encode({"m": method, "n": len(instances), "in": columns})


# (method, count, input kinds) -> (job head, block size): the jobs of one kind repeat the same header
_job_heads: dict[tuple, tuple[bytes, int]] = {}
_JOB_HEADS_LIMIT = 1024


def _stacked_job_head(writer: blocks.BlockWriter, method: str, instances: StackedInputs) -> tuple[bytes, int]:
    """Place a stacked request's rows in ``writer``; the job's encoded header and block size. The data offsets
    in the header follow from the sizes alone, so the header is encoded once per kind."""
    columns = blocks.stacked_inputs_columns(writer, instances)
    key = (method, len(instances), tuple((name, d[1], tuple(d[2]), d[3]) for name, d in columns.items()))
    head = _job_heads.get(key)
    if head is None:
        if len(_job_heads) >= _JOB_HEADS_LIMIT:
            _job_heads.clear()
        head = _job_heads[key] = writer.encode({"m": method, "n": len(instances), "in": columns})
    return head


def job_header(header: Any) -> Optional[tuple[str, int, dict]]:
    """A job header's method, instance count and column descriptors, checked; None when it is not a job's."""
    if not isinstance(header, dict):
        return None
    method, count, inputs = header.get("m"), header.get("n"), header.get("in")
    if (
        not isinstance(method, str)
        or not isinstance(count, int)
        or isinstance(count, bool)
        or count < 1
        or not isinstance(inputs, dict)
    ):
        return None
    return method, count, inputs


class JobKind(NamedTuple):
    """What a job header says, checked: its method, instance count and stacked inputs by name, and the block
    size it needs (a block shorter than that is not read through this kind)."""

    method: str
    instances: int
    inputs: dict
    needed: int


def job_kind(header: bytes, data_start: int) -> Optional[JobKind]:
    """A job header of stacked columns only, checked as the general reader checks it; None for anything else."""
    checked = job_header(blocks.header_object(header))
    if checked is None:
        return None
    method, count, inputs = checked
    columns = blocks.stacked_columns(inputs, count, data_start)
    return None if columns is None else JobKind(method, count, *columns)


# ---------------------------------------------------------------------------------------------------- replies


def error_entries(errors: list[Optional[ServingError]]) -> list[list]:
    """A reply header's errors: ``[index, code, message]`` for a failed instance, ``[first, code, message, last]``
    for a run of consecutive instances that failed alike (a whole job failing, say), so that the header of a job
    of thousands of failed instances stays short and the master parses it at once."""
    entries: list[list] = []
    for i, error in enumerate(errors):
        if error is None:
            continue
        last = entries[-1] if entries else None
        if (
            last is not None
            and last[-1 if len(last) == 4 else 0] == i - 1
            and last[1] == error.code
            and last[2] == error.message
        ):
            if len(last) == 4:
                last[3] = i
            else:
                last.append(i)
        else:
            entries.append([i, error.code, error.message])
    return entries


def decode_reply(data: memoryview, count: int, output_names: list) -> Union[list, StackedResults]:
    """One dict of RawTensors (views of ``data``) or one ServingError per instance, from a reply block: whole
    (``stacked_reply``) when every instance succeeded with stacked outputs, else instance by instance."""
    stacked = stacked_reply(data, count, output_names)
    return stacked if stacked is not None else instance_reply(data, count, output_names)


def instance_reply(data: memoryview, count: int, output_names: list) -> list:
    """The general reader of a reply block: one dict of RawTensors or one ServingError per instance."""
    reader = blocks.BlockReader(data, 0, len(data))
    header = reader.header
    if header.get("n") != count or not isinstance(header.get("err"), list) or not isinstance(header.get("out"), dict):
        raise blocks.BlockError("reply header does not match its job")
    results: list = [None] * count
    for item in header["err"]:  # [index, code, message], or [first, code, message, last] for a run
        if not (
            isinstance(item, list)
            and len(item) in (3, 4)
            and blocks.is_int(item[0])
            and 0 <= item[0] < count
            and blocks.is_int(item[1])
            and isinstance(item[2], str)
        ):
            raise blocks.BlockError("bad error entry in reply")
        last = item[3] if len(item) == 4 else item[0]
        if not (blocks.is_int(last) and item[0] <= last < count):
            raise blocks.BlockError("bad error entry in reply")
        error = from_worker(item[1], item[2])  # one object for the run: the frontends see one error
        results[item[0] : last + 1] = [error] * (last + 1 - item[0])
    ok = [i for i, r in enumerate(results) if r is None]
    columns = {}
    for name in output_names:
        if name not in header["out"]:
            if ok:
                raise blocks.BlockError(f"reply without output {name}")
            continue
        columns[name] = blocks.raw_rows(reader, header["out"][name], len(ok))
    for k, i in enumerate(ok):
        results[i] = {name: column[k] for name, column in columns.items()}
    return results


def _reply_kind(header: bytes, data_start: int) -> Optional[tuple[int, dict, int]]:
    """(count, stacked output columns, block size needed) of a reply in which every instance succeeded with
    stacked outputs; None for any other reply."""
    parsed = blocks.header_object(header)
    if parsed is None or parsed.get("err") != []:
        return None
    count = parsed.get("n")
    if not isinstance(count, int) or isinstance(count, bool):
        return None
    columns = blocks.stacked_columns(parsed.get("out"), count, data_start)
    return None if columns is None else (count, *columns)


_reply_kinds = blocks.HeaderKinds(_reply_kind)


def stacked_reply(data: memoryview, count: int, output_names: list) -> Optional[StackedResults]:
    """A reply in which every instance succeeded and every output is a stacked column: the outputs whole, as
    views of ``data`` (no per-instance objects); None for any other reply, which the general reader takes."""
    header = blocks.block_header(data, 0, len(data))
    if header is None:
        return None
    kind = _reply_kinds.get(*header)
    if kind is None or kind[0] != count or kind[2] > len(data):
        return None
    columns = kind[1]
    outputs = {}
    for name in output_names:
        column = columns.get(name)
        if column is None:
            return None
        outputs[name] = StackedOutput(column.code, column.row_shape, data[column.start : column.start + column.nbytes])
    return StackedResults(count, outputs)
