"""The worker's fast lane: a batch whose jobs are all stacked, for a method that is one model stage.

Most traffic is exactly that: every instance of every job numeric and shaped alike (the master stacks such
requests), and a method whose only stage is ``add_stage(model, <method inputs>)`` giving the method outputs.
For those, the general path's per-batch work (column objects, the stage loop, per-output conversions, a JSON
header parsed for each job and written for each reply) costs the worker about as much as a small model run,
and it runs between model runs, when nothing of it is in the CPU's caches.

Here a job header is parsed once per distinct header (jobs of one kind repeat the same bytes), the rows go to
the model as views of the request arena (or gathered in C when several jobs share a run), and each reply's
header is likewise written once per kind. Anything else (another method shape, a column that is not stacked,
inputs that do not fit the model, more instances than one run takes, outputs the fast reply cannot carry)
leaves the batch untouched for the general path, which also gives every error its exact text: both paths
answer every job the same way.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple, Optional, Sequence

import numpy as np

from mindserve import _dtypes
from mindserve._errors import ServingError
from mindserve._metrics.worker_stats import WorkerStats, stage_label
from mindserve._servable.definition import MethodDefinition
from mindserve._transport import blocks, jobs
from mindserve._transport.shm_channel import REQUESTS, ShmChannel
from mindserve._workers.batching import stack_rows
from mindserve._workers.columns import Column
from mindserve._workers.executor import MethodExecutor
from mindserve._workers.job_io import reply_block, send_encoded, send_error, send_reply
from mindserve._workers.model_runner import ModelRunner

_CACHE_LIMIT = 1024


class _Plan(NamedTuple):
    """How a model-only method runs: the model, which method input feeds each model input, and which model
    output each method output is."""

    runner: ModelRunner
    method_inputs: tuple  # every input of the method: a job without one is the general path's to refuse
    input_names: tuple
    output_index: tuple
    output_names: tuple


def _plan(executor: MethodExecutor, method: MethodDefinition) -> Optional[_Plan]:
    """The plan of a method that is exactly one model stage over method inputs, or None."""
    if len(method.stages) != 1 or not method.stages[0].is_model:
        return None
    stage = method.stages[0]
    runner = executor.runners.get(stage.model)
    if runner is None or not runner.model.with_batch_dim:
        return None
    session = runner.sessions[0]
    if (
        len(stage.args) != len(session.inputs)
        or any(p.stage != 0 for p in stage.args)
        or any(p.stage != 1 for p in method.outputs)
    ):
        return None
    return _Plan(
        runner,
        tuple(method.input_names),
        tuple(method.input_names[p.index] for p in stage.args),
        tuple(p.index for p in method.outputs),
        tuple(method.output_names),
    )


class FastLane:
    """Runs batches through the fast lane when they qualify (see the module docstring)."""

    def __init__(
        self, executor: MethodExecutor, channel: ShmChannel, event_fd: int, stats: Optional[WorkerStats] = None
    ):
        self._executor = executor
        self._stats = stats
        self._stage = stage_label(1, True)
        self._channel = channel
        self._event_fd = event_fd
        self._view = channel.view
        self._plans: dict[str, Optional[_Plan]] = {}
        self._kinds = blocks.HeaderKinds(jobs.job_kind)
        self._shapes: dict[tuple, Optional[tuple]] = {}  # (model input, dtype, row shape) -> instance shape
        self._replies: dict[tuple, tuple] = {}  # (output descriptors, count) -> (reply head, block size)

    def _kind(self, offset: int, size: int) -> Optional[jobs.JobKind]:
        if not self._channel.contains(REQUESTS, offset, size):
            return None
        header = blocks.block_header(self._view, offset, size)
        if header is None:
            return None
        kind = self._kinds.get(*header)
        return kind if kind is not None and kind.needed <= size else None

    def _method_plan(self, method: str) -> Optional[_Plan]:
        if method not in self._plans:
            definition = self._executor.servable.methods.get(method)
            self._plans[method] = _plan(self._executor, definition) if definition else None
        return self._plans[method]

    def _instance_shape(self, runner: ModelRunner, index: int, column: blocks.StackedColumn) -> Optional[tuple]:
        """The model's instance shape for a column of this kind, or None when it does not fit (the general
        path then says why)."""
        key = (id(runner), index, column.dtype, column.row_shape)
        if key not in self._shapes:
            if len(self._shapes) >= _CACHE_LIMIT:
                self._shapes.clear()
            try:
                self._shapes[key] = runner.check_column(
                    index, runner.sessions[0].inputs[index], (column.dtype, column.row_shape)
                )
            except ServingError:
                self._shapes[key] = None
        return self._shapes[key]

    def run(self, entries: list[tuple[int, int, int, int]], queued: Sequence[int] = ()) -> bool:
        """Answer every job of a popped batch and return True, or return False having done nothing. ``queued``:
        how long each job waited in the queue (nanoseconds), for the statistics."""
        began = time.perf_counter_ns()
        try:
            prepared = self._prepare(entries)
        except Exception:  # a defect here must not lose the batch: the general path takes it and reports it
            return False
        if prepared is None:
            return False
        kinds, plan, feeds, total = prepared
        method = kinds[0].method
        runner = plan.runner
        running = time.perf_counter_ns()
        ran = runner.run_rows(runner.sessions[0], feeds, total)
        replying = time.perf_counter_ns()
        if isinstance(ran, ServingError) and total > 1:
            return False  # the general path runs the rows again in parts, so that only those that fail carry it
        self._answer(entries, kinds, plan, ran, total)
        if self._stats is not None:
            self._stats.record(
                method,
                queued or [0] * len(entries),
                [(self._stage, replying - running)],
                total,
                running - began,
                time.perf_counter_ns() - replying,
            )
        return True

    def _answer(self, entries: list, kinds: list[jobs.JobKind], plan: _Plan, ran, total: int) -> None:
        """Reply to each job of the batch with its rows of the model's outputs, or with the run's error."""
        method = kinds[0].method
        if isinstance(ran, ServingError):
            for (job_id, _, _, _), kind in zip(entries, kinds):
                send_error(self._channel, self._event_fd, job_id, kind.instances, ran, wake=False)
            return
        outputs = [ran[i] for i in plan.output_index]
        found = [_dtypes.CODE_OF.get(out.dtype) for out in outputs]
        codes = [code for code in found if code is not None]
        start = 0
        for (job_id, _, _, _), kind in zip(entries, kinds):
            stop = start + kind.instances
            rows = [out[start:stop] for out in outputs]
            if len(codes) < len(found):  # outputs converted value by value: the general path's reply
                columns = {n: Column([r]) for n, r in zip(plan.output_names, rows)}
                writer, header = reply_block(method, kind.instances, columns, [None] * kind.instances)
                send_reply(self._channel, self._event_fd, job_id, writer, header, wake=False)
            else:
                self._reply(job_id, kind.instances, plan.output_names, rows, codes)
            start = stop

    def _prepare(self, entries: list) -> Optional[tuple[list[jobs.JobKind], _Plan, list[np.ndarray], int]]:
        """The batch's job kinds, its method's plan, the model's inputs and the instance count; None when the
        batch does not qualify."""
        kinds = []
        for _, offset, size, _ in entries:
            kind = self._kind(offset, size)
            if kind is None:
                return None
            kinds.append(kind)
        if not kinds:
            return None
        method = kinds[0].method
        plan = self._method_plan(method)
        if plan is None or any(k.method != method or any(n not in k.inputs for n in plan.method_inputs) for k in kinds):
            return None
        runner = plan.runner
        total = sum(k.instances for k in kinds)
        fixed = runner.fixed_batch_size(runner.sessions[0])
        if total > (fixed or runner.max_batch_size or total):
            return None
        feeds = []
        for index, name in enumerate(plan.input_names):
            found = [k.inputs.get(name) for k in kinds]
            columns = [c for c in found if c is not None]
            first = columns[0] if columns else None
            if (
                first is None
                or len(columns) < len(found)
                or any(c.dtype != first.dtype or c.row_shape != first.row_shape for c in columns)
            ):
                return None
            shape = self._instance_shape(runner, index, first)
            if shape is None:
                return None
            feeds.append(self._feed(entries, columns, kinds, shape, fixed or total))
        return kinds, plan, feeds, total

    def _feed(
        self, entries: list, columns: list[blocks.StackedColumn], kinds: list[jobs.JobKind], shape: tuple, rows: int
    ) -> np.ndarray:
        """One model input over the batch: the job's own rows when one job fills the run, else gathered."""
        pieces = [
            np.frombuffer(self._view, c.dtype, k.instances * math.prod(c.row_shape), offset + c.start)
            for (_, offset, _, _), c, k in zip(entries, columns, kinds)
        ]
        return stack_rows(pieces, rows, shape, columns[0].dtype)

    def _reply(self, job_id: int, count: int, names: tuple, outputs: list[np.ndarray], codes: list[int]) -> None:
        """A job's reply of stacked outputs; its header is encoded once per (count, output kinds): the data
        offsets in it follow from the sizes alone."""
        writer = blocks.BlockWriter()
        out = {}
        for name, arr, code in zip(names, outputs, codes):
            arr = np.ascontiguousarray(arr)
            out[name] = ("s", code, arr.shape[1:], writer.add_rows([arr]))
        key = tuple(out.items()), count
        encoded = self._replies.get(key)
        if encoded is None:
            if len(self._replies) >= _CACHE_LIMIT:
                self._replies.clear()
            header = {"n": count, "err": [], "out": {n: [d[0], d[1], list(d[2]), d[3]] for n, d in out.items()}}
            encoded = self._replies[key] = writer.encode(header)
        send_encoded(self._channel, self._event_fd, job_id, count, writer, *encoded)
