"""A storm of scrapes costs one question to the workers per interval: scrapes reuse the workers' totals while
they are younger than the maximum age, scrapes that arrive during a question share its answer, and a scraper
that leaves does not cancel the question the others wait for. The master's own request counts stay live."""

from __future__ import annotations

import asyncio

from mindserve._metrics.exposition import ServerMetrics
from mindserve._metrics.requests import RequestMetrics


class CountingDispatcher:
    """What ServerMetrics reads of a dispatcher, counting the questions to the workers."""

    def __init__(self, answer_after: float = 0.0):
        self.requests = RequestMetrics()
        self.asked = 0
        self.answer_after = answer_after

    async def worker_stats(self) -> dict:
        self.asked += 1
        await asyncio.sleep(self.answer_after)
        return {}

    def pending(self) -> dict:
        return {}

    def worker_states(self) -> list:
        return []


def test_scrapes_within_the_maximum_age_reuse_the_workers_totals():
    async def scenario():
        dispatcher = CountingDispatcher()
        metrics = ServerMetrics(dispatcher, worker_totals_max_age_s=0.2)  # type: ignore[arg-type]  # a stand-in
        for _ in range(50):
            assert b"mindserve_build_info" in await metrics.exposition()
        assert dispatcher.asked == 1
        await asyncio.sleep(0.25)
        await metrics.exposition()
        assert dispatcher.asked == 2
        await metrics.exposition(refresh=False)  # (a caller that wants no question at all)
        assert dispatcher.asked == 2

    asyncio.run(scenario())


def test_concurrent_scrapes_share_one_question_and_a_leaving_scraper_cancels_nothing():
    async def scenario():
        dispatcher = CountingDispatcher(answer_after=0.1)
        metrics = ServerMetrics(dispatcher, worker_totals_max_age_s=10.0)  # type: ignore[arg-type]  # a stand-in
        leaver = asyncio.create_task(metrics.exposition())
        await asyncio.sleep(0.02)
        others = [asyncio.create_task(metrics.exposition()) for _ in range(20)]
        leaver.cancel()
        bodies = await asyncio.gather(*others)
        assert all(b"mindserve_build_info" in body for body in bodies)
        assert dispatcher.asked == 1

    asyncio.run(scenario())


def test_a_failed_question_is_asked_again_by_the_next_scrape():
    async def scenario():
        dispatcher = CountingDispatcher()
        metrics = ServerMetrics(dispatcher, worker_totals_max_age_s=10.0)  # type: ignore[arg-type]  # a stand-in

        async def broken() -> dict:
            dispatcher.asked += 1
            raise RuntimeError("the workers are gone")

        dispatcher.worker_stats = broken  # type: ignore[method-assign]
        try:
            await metrics.exposition()
        except RuntimeError as exc:
            assert str(exc) == "the workers are gone"
        else:
            raise AssertionError("the failure was not raised")
        del dispatcher.worker_stats
        await metrics.exposition()
        assert dispatcher.asked == 2

    asyncio.run(scenario())
