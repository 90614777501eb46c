"""The ring allocator of the native channel's two message arenas (native/arena.c) against its model in Python
(support/channel.py's RingModel): alignment, filling, out-of-order release, wrap-around, the window the ring
keeps to, and every release that is refused."""

from __future__ import annotations

import random
from collections import deque

import pytest

from mindserve._native import ffi, lib
from mindserve._transport.shm_channel import REPLIES, REQUESTS, ArenaFull, MessageTooBig, ShmChannel
from support.channel import ALIGN, U64_MAX, RingModel, align_up, arena_model

# -------------------------------------------------------------------------------------------------------- arenas


def try_alloc(ch: ShmChannel, which: int, size: int):
    try:
        return ch.alloc(which, size)
    except ArenaFull:
        return "full"
    except MessageTooBig:
        return "too big"


def arena_bytes(ch: ShmChannel, model: RingModel) -> bytes:
    return bytes(ch.view[model.offset : model.offset + model.capacity])


@pytest.mark.parametrize("which", [REQUESTS, REPLIES])
def test_blocks_are_aligned_and_inside_their_arena(channel, which):
    model = arena_model(channel, which)
    other = REPLIES if which == REQUESTS else REQUESTS
    sizes = [0, 1, 63, 64, 65, 127, 128, 1000, 4096, 5]
    offsets = []
    for size in sizes:
        offset = channel.alloc(which, size)
        assert offset == model.alloc(size)
        assert offset % ALIGN == 0
        assert model.offset + ALIGN <= offset and offset + size <= model.offset + model.capacity
        assert channel.contains(which, offset, size)
        assert not channel.contains(other, offset, size)
        offsets.append(offset)
    spans = sorted(zip(offsets, sizes))
    for (a, size_a), (b, _) in zip(spans, spans[1:]):
        assert a + size_a + ALIGN <= b  # a header of its own in front of every block
    for offset in offsets:
        channel.release(which, offset)


@pytest.mark.parametrize("which", [REQUESTS, REPLIES])
def test_arena_fills_to_capacity_then_is_full_until_the_oldest_is_released(channel, which):
    model = arena_model(channel, which)
    need = align_up(100 + ALIGN)
    count = model.capacity // need
    offsets = [channel.alloc(which, 100) for _ in range(count)]
    assert offsets == [model.offset + ALIGN + i * need for i in range(count)]
    with pytest.raises(ArenaFull):
        channel.alloc(which, 100)
    rest = model.capacity - count * need  # less than one more such block
    if rest:
        last = channel.alloc(which, rest - ALIGN)  # exactly what is left, header included
        assert last == model.offset + count * need + ALIGN
        assert channel.contains(which, last, rest - ALIGN) and not channel.contains(which, last, rest - ALIGN + 1)
    with pytest.raises(ArenaFull):
        channel.alloc(which, 0)
    assert lib.ms_alloc(channel.layout, which, 0, ffi.new("uint64_t *")) == lib.MS_EFULL

    channel.release(which, offsets[0])
    assert channel.alloc(which, 100) == offsets[0]  # back at the front of the ring
    with pytest.raises(ArenaFull):
        channel.alloc(which, 0)


@pytest.mark.parametrize("which", [REQUESTS, REPLIES])
def test_out_of_order_release_is_reclaimed_once_the_older_blocks_are(channel, which):
    model = arena_model(channel, which)
    need = align_up(100 + ALIGN)
    count = model.capacity // need
    offsets = [channel.alloc(which, 100) for _ in range(count)]
    for offset in offsets:
        model.alloc(100)

    for offset in (offsets[2], offsets[1]):
        channel.release(which, offset)
        model.release(offset)
        with pytest.raises(ArenaFull):
            channel.alloc(which, 100)
        assert model.alloc(100) == "full"

    channel.release(which, offsets[0])
    model.release(offsets[0])
    again = [channel.alloc(which, 100) for _ in range(3)]
    assert again == offsets[:3] == [model.alloc(100) for _ in range(3)]
    with pytest.raises(ArenaFull):
        channel.alloc(which, 100)


def pattern(tag: int, size: int) -> bytes:
    return (tag.to_bytes(8, "little") * (size // 8 + 1))[:size]


@pytest.mark.parametrize("which", [REQUESTS, REPLIES])
def test_wrap_around_keeps_every_block_intact(channel, which):
    rng = random.Random(1234 + which)
    model = arena_model(channel, which)
    view = channel.view
    live: dict = {}  # offset -> (tag, size)
    order: deque = deque()  # offsets in allocation order
    wraps = fulls = 0
    last = -1
    for tag in range(2500):
        size = rng.choice([0, 1, 63, 64, 65, rng.randrange(1, 2000), rng.randrange(1, model.capacity // 6)])
        while True:
            expected = model.alloc(size)
            got = try_alloc(channel, which, size)
            assert got == expected, (tag, size)
            if got != "full":
                break
            fulls += 1
            # release the oldest, or sometimes a younger block first (reclaimed later), and try again
            victim = order[0] if rng.random() < 0.7 or len(order) < 3 else order[rng.randrange(1, 3)]
            vtag, vsize = live.pop(victim)
            assert bytes(view[victim : victim + vsize]) == pattern(vtag, vsize), "a block was overwritten"
            channel.release(which, victim)
            model.release(victim)
            order.remove(victim)
        assert got % ALIGN == 0 and channel.contains(which, got, size)
        for offset, (_, other_size) in live.items():  # no overlap with a live block, headers included
            assert got + size <= offset - ALIGN or offset + other_size <= got - ALIGN
        wraps += got < last
        last = got
        view[got : got + size] = pattern(tag, size)
        live[got] = (tag, size)
        order.append(got)
    for offset in list(order):
        vtag, vsize = live.pop(offset)
        assert bytes(view[offset : offset + vsize]) == pattern(vtag, vsize)
        channel.release(which, offset)
    assert wraps > 10 and fulls > 100  # the loop did go round the ring, and through full arenas
    assert model.skipped  # and skipped ends of the ring
    for data in model.skipped:
        assert lib.ms_release(channel.layout, which, data) == lib.MS_EINVAL  # a skip block is no live block
    # everything released: the whole arena is one block again
    assert channel.alloc(which, channel.max_message(which)) == model.offset + ALIGN


@pytest.mark.parametrize("which", [REQUESTS, REPLIES])
def test_a_message_larger_than_the_arena_is_too_big(channel, which):
    model = arena_model(channel, which)
    biggest = channel.max_message(which)
    assert biggest == model.capacity - ALIGN
    out = ffi.new("uint64_t *", 12345)
    for size in (biggest + 1, model.capacity, U64_MAX, U64_MAX - 63, 2**63):
        assert lib.ms_alloc(channel.layout, which, size, out) == lib.MS_ETOOBIG
        assert out[0] == 12345
    with pytest.raises(MessageTooBig):
        channel.alloc(which, biggest + 1)

    whole = channel.alloc(which, biggest)
    assert whole == model.offset + ALIGN
    assert channel.contains(which, whole, biggest)
    with pytest.raises(ArenaFull):
        channel.alloc(which, 0)
    with pytest.raises(MessageTooBig):  # too big stays too big, even while the arena is full
        channel.alloc(which, biggest + 1)
    channel.release(which, whole)
    assert channel.alloc(which, biggest) == whole


def test_releasing_anything_but_a_live_block_is_refused_and_writes_nothing(channel):
    requests = arena_model(channel, REQUESTS)
    replies = arena_model(channel, REPLIES)
    a = channel.alloc(REQUESTS, 300)
    b = channel.alloc(REQUESTS, 10)
    keep = channel.alloc(REQUESTS, 0)
    channel.release(REQUESTS, b)  # released, not reclaimed: `a` is live in front of it
    reply = channel.alloc(REPLIES, 64)
    channel.view[a : a + 300] = b"\x01" * 300
    snapshot = arena_bytes(channel, requests), arena_bytes(channel, replies), bytes(channel.view[:4096])

    bad = [
        a + 1,
        a + 8,
        a + 32,
        a + 63,
        a - ALIGN,
        a + ALIGN,
        a + 128,  # misaligned, or not a block's data
        b,  # released already
        0,
        8,
        ALIGN,
        requests.offset,
        requests.offset + requests.capacity,
        requests.offset + requests.capacity + ALIGN,
        U64_MAX,
        U64_MAX - 63,
        2**63,
        2**32 * ALIGN,
        reply,
    ]  # a live block, of the other arena
    for offset in bad:
        assert lib.ms_release(channel.layout, REQUESTS, offset) == lib.MS_EINVAL, offset
    for offset in (a, keep, 0, U64_MAX, replies.offset + replies.capacity):
        assert lib.ms_release(channel.layout, REPLIES, offset) == lib.MS_EINVAL, offset
    with pytest.raises(ValueError, match=r"^arena release failed \(status -1\)$"):
        channel.release(REQUESTS, b)
    assert (arena_bytes(channel, requests), arena_bytes(channel, replies), bytes(channel.view[:4096])) == snapshot

    # the live blocks are still live, and each can be released exactly once
    for which, offset in ((REQUESTS, a), (REQUESTS, keep), (REPLIES, reply)):
        assert lib.ms_release(channel.layout, which, offset) == lib.MS_OK
        assert lib.ms_release(channel.layout, which, offset) == lib.MS_EINVAL


def test_a_block_released_again_after_it_was_reclaimed_is_refused(channel):
    first = channel.alloc(REQUESTS, 100)
    second = channel.alloc(REQUESTS, 100)
    channel.release(REQUESTS, first)
    third = channel.alloc(REQUESTS, 100)  # reclaims `first`; `second` is live, so the ring does not restart
    assert third not in (first, second)
    assert lib.ms_release(channel.layout, REQUESTS, first) == lib.MS_EINVAL
    channel.release(REQUESTS, second)
    channel.release(REQUESTS, third)


def test_contains_never_overflows(channel):
    model = arena_model(channel, REQUESTS)
    start, end = model.offset + ALIGN, model.offset + model.capacity
    inside = [(start, model.capacity - ALIGN), (start, 0), (end, 0), (end - 1, 1), (start + 64, 100)]
    outside = [
        (start - 1, 0),
        (model.offset, 0),
        (start, model.capacity - ALIGN + 1),
        (end, 1),
        (end + 1, 0),
        (U64_MAX, 0),
        (U64_MAX, 1),
        (U64_MAX, U64_MAX),
        (start, U64_MAX),
        (start, U64_MAX - start + 1),
        (U64_MAX - 63, 64),
        (2**63, 2**63),
        (end - 1, U64_MAX),
        (0, 0),
        (0, end),
    ]
    for offset, size in inside:
        assert lib.ms_contains(channel.layout, REQUESTS, offset, size) == 1, (offset, size)
    for offset, size in outside:
        assert lib.ms_contains(channel.layout, REQUESTS, offset, size) == 0, (offset, size)
        assert channel.contains(REQUESTS, offset, size) is False


def test_an_unknown_arena_is_refused(channel):
    out = ffi.new("uint64_t *", 7)
    for which in (2, -1, 1000):
        assert lib.ms_alloc(channel.layout, which, 8, out) == lib.MS_EINVAL
        assert out[0] == 7
        assert lib.ms_release(channel.layout, which, 4096) == lib.MS_EINVAL
        assert lib.ms_contains(channel.layout, which, 4096, 0) == 0
        assert lib.ms_max_alloc(channel.layout, which) == 0


# ----------------------------------------------------------------------------------------- the ring's window

WINDOW = 4 << 20  # MS_ARENA_WINDOW in native/arena.c


def test_the_ring_wraps_early_while_the_live_blocks_fit_in_its_window():
    """Messages of 1 MiB, three alive at a time, through a 64 MiB segment: the ring keeps to its first few
    MiB (memory still in the caches) instead of running through the whole arena, and live blocks never overlap."""
    ch = ShmChannel.create(64 << 20, "the test")
    try:
        start = ch.alloc(REQUESTS, 64)
        ch.release(REQUESTS, start)  # the arena is empty again: its ring starts at the front
        live: deque = deque()
        highest = 0
        for i in range(200):
            if len(live) == 3:
                ch.release(REQUESTS, live.popleft()[0])
            offset = ch.alloc(REQUESTS, 1 << 20)
            for other, _ in live:
                assert offset + (1 << 20) <= other or other + (1 << 20) <= offset
            ch.view[offset : offset + 8] = i.to_bytes(8, "little")
            live.append((offset, i))
            highest = max(highest, offset + (1 << 20) - start)
        assert highest <= WINDOW + (1 << 20) + 4096
        for offset, i in live:  # no block was handed out twice while alive
            assert int.from_bytes(ch.view[offset : offset + 8], "little") == i
    finally:
        ch.unmap()
        ch.close_fd()


def test_live_blocks_larger_than_the_window_run_on_through_the_ring():
    ch = ShmChannel.create(64 << 20, "the test")
    try:
        size = 3 << 20
        live = [ch.alloc(REQUESTS, size) for _ in range(5)]  # 15 MiB alive: past the window
        assert max(live) - min(live) >= WINDOW
        for offset in live[:2]:
            ch.release(REQUESTS, offset)
        again = ch.alloc(REQUESTS, size)  # the front is free again: the ring wraps there, clear of the live ones
        assert all(again + size <= o or o + size <= again for o in live[2:])
    finally:
        ch.unmap()
        ch.close_fd()
