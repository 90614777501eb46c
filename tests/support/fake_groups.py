"""Servable versions in memory, for testing the dispatcher and the protocol cores without a worker process: a
FakeGroup implements the dispatcher's WorkerGroup protocol (mindserve._dispatch.worker_group)."""

from __future__ import annotations

import asyncio
from typing import Callable, Optional, Sequence

from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._dispatch.worker_group import DeviceState
from mindserve._servable.signature import MethodSignature, TensorSpec
from mindserve._tensor import RawTensor

ADD = MethodSignature(("x1", "x2"), ("y",), (TensorSpec(11, (2,)), TensorSpec(11, (2,))), (TensorSpec(11, (2,)),))
ECHO = MethodSignature(("x",), ("x",), (TensorSpec(0, None),), (TensorSpec(0, None),))


class FakeGroup:
    """A servable version's workers in memory: answers each instance with its own inputs, or with what
    ``answer`` makes of them; ``up`` and ``restarting`` say what a real group would of its processes."""

    def __init__(
        self,
        name: str,
        version: int,
        methods: Optional[dict] = None,
        up: bool = True,
        restarting: bool = False,
        answer: Optional[Callable] = None,
    ):
        self.name, self.version = name, version
        self.methods = methods if methods is not None else {"add": ADD}
        self.seldon: Optional[dict] = None
        self.restart_wait_s = 0.0
        self.on_change: Optional[Callable[[], None]] = None
        self.up, self.restarting = up, restarting
        self.answer = answer or (lambda instance: dict(instance))
        self.calls: list[tuple[str, int, int]] = []  # (method, instances, version named)
        self.release = asyncio.Event()
        self.hold = False

    @property
    def ready(self) -> bool:
        return self.up

    @property
    def recovering(self) -> bool:
        return self.restarting

    async def run(self, method: str, instances: Sequence[dict[str, RawTensor]], version: int) -> list:
        self.calls.append((method, len(instances), version))
        if self.hold:
            await self.release.wait()
        return [self.answer(instance) for instance in instances]

    def states(self) -> list[DeviceState]:
        return [DeviceState(0, self.up, 0)]

    async def stats(self) -> dict:
        return {}

    def die(self) -> None:
        self.up = False
        if self.on_change is not None:
            self.on_change()


def dispatcher_of(*groups: FakeGroup) -> Dispatcher:
    dispatcher = Dispatcher()
    for group in groups:
        dispatcher.add(group)
    return dispatcher
