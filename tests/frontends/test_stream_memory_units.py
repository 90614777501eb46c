"""The streams' memory budget (mindserve._frontends.stream_memory) and the reader over it (grpc/ordered.py),
without a server: reservations within a stream's share and the budget, waiters served in order, a stream kept
back by its own share holding up no other, held-back batches started before anyone waits, everything given back
when a stream ends or a wait is cancelled, and the drain stopping a reader in the middle of a read."""

from __future__ import annotations

import asyncio

import pytest

from mindserve._frontends.grpc.ordered import OrderedAnswers, StopReading, read_into
from mindserve._frontends.stream_memory import StreamMemory

BUDGET = 100


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_reservations_within_the_share_and_the_budget_are_granted_at_once():
    async def scenario():
        memory = StreamMemory(BUDGET)
        a, b = memory.share(), memory.share()
        first, second = a.ticket(), b.ticket()
        await first.grow_to(50)
        await second.grow_to(40)
        assert (memory.used, a.held, b.held, first.nbytes) == (90, 50, 40, 50)
        second.resize(10)
        first.release()
        assert (memory.used, a.held, b.held) == (10, 0, 10)
        first.release()  # again: harmless
        assert memory.used == 10

    run(scenario())


def test_a_reservation_is_at_most_a_streams_share_and_a_stream_holds_at_most_its_share():
    async def scenario():
        memory = StreamMemory(BUDGET)
        share = memory.share()
        big = share.ticket()
        await big.grow_to(1000)  # more than a share: clamped to it
        assert (big.nbytes, memory.used) == (50, 50)
        more = share.ticket()
        waiting = asyncio.ensure_future(more.grow_to(1))
        await settle()
        assert not waiting.done()  # its own share is full, though the budget is not
        big.resize(49)
        await settle()
        assert waiting.done() and share.held == 50

    run(scenario())


def test_charges_never_wait_and_past_the_budget_everyone_waits_in_order():
    async def scenario():
        memory = StreamMemory(BUDGET)
        a, b, c, d = (memory.share() for _ in range(4))
        held = a.ticket()
        held.charge_to(45)  # bytes that exist
        other = b.ticket()
        other.charge_to(45)
        large, small = c.ticket(), d.ticket()
        waits = [asyncio.ensure_future(large.grow_to(30)), asyncio.ensure_future(small.grow_to(5))]
        await settle()
        # the small one would fit (95 of 100), but the large one came first and is served first
        assert [w.done() for w in waits] == [False, False]
        held.release()
        await settle()
        assert [w.done() for w in waits] == [True, True]
        assert memory.used == 45 + 30 + 5

    run(scenario())


def test_a_stream_kept_back_by_its_own_share_holds_up_no_other():
    async def scenario():
        memory = StreamMemory(BUDGET)
        full, other = memory.share(), memory.share()
        await full.ticket().grow_to(50)
        blocked = asyncio.ensure_future(full.ticket().grow_to(10))
        free = asyncio.ensure_future(other.ticket().grow_to(10))
        await settle()
        assert (blocked.done(), free.done()) == (False, True)
        blocked.cancel()

    run(scenario())


def test_a_cancelled_wait_leaves_the_queue_and_lets_the_next_go():
    async def scenario():
        memory = StreamMemory(BUDGET)
        a, b, c = memory.share(), memory.share(), memory.share()
        await a.ticket().grow_to(50)
        await b.ticket().grow_to(45)
        first = asyncio.ensure_future(c.ticket().grow_to(20))
        behind = c.ticket()
        second = asyncio.ensure_future(behind.grow_to(5))
        await settle()
        assert not second.done()
        first.cancel()
        await settle()
        assert second.done() and behind.nbytes == 5 and memory.used == 100

    run(scenario())


def test_a_closed_stream_gives_everything_back_and_its_waits_end():
    async def scenario():
        memory = StreamMemory(BUDGET)
        a, b = memory.share(), memory.share()
        tickets = [a.ticket(), a.ticket()]
        await tickets[0].grow_to(30)
        tickets[1].charge_to(20)
        await b.ticket().grow_to(45)
        waiting = asyncio.ensure_future(a.ticket().grow_to(10))
        other = asyncio.ensure_future(memory.share().ticket().grow_to(10))
        await settle()
        assert not waiting.done() and not other.done()
        assert a.close() == 50
        await settle()
        assert waiting.cancelled() and other.done()
        assert (memory.used, a.held) == (55, 0)
        tickets[0].resize(99)  # a late answer of the ended stream counts nothing
        assert memory.used == 55 and a.close() == 0

    run(scenario())


def test_held_back_batches_are_started_before_anyone_waits():
    async def scenario():
        memory = StreamMemory(BUDGET)
        started: list = []
        media, other = memory.share(), memory.share()
        media.set_flush(lambda: started.append("media"))
        pending = media.ticket()
        await pending.grow_to(40)
        # its own share short: its own batch is started
        own = asyncio.ensure_future(media.ticket().grow_to(20))
        await settle()
        assert started == ["media"] and not own.done()
        pending.release()  # (the batch has run)
        await settle()
        assert own.done()
        # the budget short: every stream's held-back batch is started
        await other.ticket().grow_to(40)
        third = memory.share()
        budget = asyncio.ensure_future(third.ticket().grow_to(45))  # 20 + 40 + 45 > 100
        await settle()
        assert started == ["media", "media"] and not budget.done()
        media.close()
        await settle()
        assert budget.done()

    run(scenario())


def test_a_new_limit_applies_to_the_waiters():
    async def scenario():
        memory = StreamMemory(BUDGET)
        await memory.share().ticket().grow_to(50)
        waiting = asyncio.ensure_future(memory.share().ticket().grow_to(80))  # clamped to the share, 50
        await settle()
        assert waiting.done()  # 50 + 50
        later = asyncio.ensure_future(memory.share().ticket().grow_to(50))
        await settle()
        assert not later.done()
        memory.set_limit(300)
        await settle()
        assert later.done() and memory.per_stream == 150

    run(scenario())


def test_drain_callbacks_run_once_and_at_once_after_the_drain():
    memory = StreamMemory(BUDGET)
    calls: list = []
    memory.on_drain(lambda: calls.append(1))
    unregister = memory.on_drain(lambda: calls.append(2))
    unregister()
    memory.drain()
    memory.drain()
    memory.on_drain(lambda: calls.append(3))
    assert calls == [1, 3]


class _Requests:
    """A client's requests: ``given`` then a wait for ever (the client neither sends nor half-closes)."""

    def __init__(self, *given: bytes):
        self.given = list(given)

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        if self.given:
            return self.given.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("never")


def test_the_drain_stops_a_reader_in_the_middle_of_a_read_and_starts_what_it_holds_back():
    async def scenario():
        memory = StreamMemory(BUDGET)
        share = memory.share()
        flushed: list = []
        share.set_flush(lambda: flushed.append("flush"))
        answers = OrderedAnswers(4)

        async def start(data: bytes, ticket):
            ticket.resize(len(data))
            return data.upper()

        reading = asyncio.ensure_future(read_into(answers, _Requests(b"one", b"two"), start, share, drained="gone"))
        await settle()
        assert not reading.done() and share.held == 6 + 1  # two answers, and room for a third read
        memory.drain()
        assert await reading == "gone"
        assert flushed == ["flush"]  # what the stream held back is started as the reading ends
        assert [a async for a in answers.answers()] == [b"ONE", b"TWO"]
        assert share.held == 6  # the answers' tickets (their stream gives them back when it ends)

    run(scenario())


def test_the_reader_ends_at_a_half_close_or_when_start_says_so_and_gives_its_read_back():
    async def scenario():
        memory = StreamMemory(BUDGET)
        share = memory.share()
        answers = OrderedAnswers(4)

        async def stop(data: bytes, ticket):
            return StopReading(f"stopped at {data.decode()}")

        assert await read_into(answers, _Requests(b"x"), stop, share) == "stopped at x"
        assert share.held == 0
        share.set_flush(lambda: None)

        class Closed(_Requests):
            async def __anext__(self) -> bytes:
                raise StopAsyncIteration

        assert await read_into(OrderedAnswers(4), Closed(), stop, share) is None
        assert share.held == 0

    run(scenario())


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_a_budget_of_a_byte_or_two_still_lets_every_stream_go_on(limit):
    async def scenario():
        memory = StreamMemory(limit)
        shares = [memory.share() for _ in range(3)]
        for share in shares:
            ticket = share.ticket()
            await asyncio.wait_for(ticket.grow_to(5), 5)
            ticket.release()
        assert memory.used == 0

    run(scenario())


@pytest.mark.parametrize(
    "given, message",
    [
        (0, "Parameter 'max_stream_memory_mb' should be in range [1,1048576]"),
        (1 << 21, "Parameter 'max_stream_memory_mb' should be in range [1,1048576]"),
        (True, "Parameter 'max_stream_memory_mb' should be int, but actually <class 'bool'>"),
    ],
)
def test_the_setting_is_checked_before_anything_starts(given, message):
    from mindserve.server import context

    with pytest.raises(RuntimeError) as refused:
        context.set_max_stream_memory_mb(given)
    assert str(refused.value) == message
