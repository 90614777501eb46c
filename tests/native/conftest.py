"""Fixtures of the native tests."""

from __future__ import annotations

import pytest

from mindserve._transport.shm_channel import ShmChannel
from support.channel import SEG


@pytest.fixture
def channel():
    ch = ShmChannel.create(SEG, "the test")
    yield ch
    ch.close_fd()
    ch.unmap()
