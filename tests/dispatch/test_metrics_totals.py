"""What the master makes of a worker's statistics: a snapshot read back equals what the worker counted, totals
add up exactly, and a snapshot that is not the expected shape (a worker runs user code) is dropped whole, never
trusted, and never names a method the servable did not report."""

from __future__ import annotations

import pytest

from mindserve._metrics.histogram import BATCH_BOUNDS, DURATION_BOUNDS_NS, Histogram
from mindserve._metrics.totals import MethodTotals, add_totals, read_snapshot
from mindserve._metrics.worker_stats import WorkerStats, stage_label


def counted() -> WorkerStats:
    stats = WorkerStats()
    stats.record(
        "predict",
        [50_000, 2_000_000],
        [(stage_label(1, False), 30_000), (stage_label(2, True), 900_000)],
        5,
        10_000,
        20_000,
    )
    stats.record("predict", [1_000], [(stage_label(1, False), 40_000), (stage_label(2, True), 700_000)], 1, 1, 2)
    return stats


def test_a_snapshot_read_back_is_what_the_worker_counted():
    totals = read_snapshot(counted().snapshot(), {"predict"})["predict"]
    assert (totals.executions, totals.inferences, totals.jobs) == (2, 6, 3)
    assert totals.queue.count == 3 and totals.queue.total == 2_051_000
    assert sorted(totals.stages) == ["1:python", "2:model"]
    assert totals.stages["2:model"].total == 1_600_000 and totals.stages["2:model"].count == 2
    assert totals.batch.counts[BATCH_BOUNDS.index(4) + 1] == 1  # 5 instances: in the bucket up to 8
    assert totals.batch.counts[0] == 1  # 1 instance
    # per request: each job carries its execution's durations
    assert totals.compute == [2 * 10_000 + 1, 2 * 930_000 + 740_000, 2 * 20_000 + 2]
    assert totals.by_batch == {5: [1, 10_000, 930_000, 20_000], 1: [1, 1, 740_000, 2]}


def test_totals_add_up_over_workers():
    merged: dict[str, MethodTotals] = {}
    for _ in range(3):
        add_totals(merged, read_snapshot(counted().snapshot(), {"predict"}))
    assert (merged["predict"].executions, merged["predict"].queue.count) == (6, 9)
    assert merged["predict"].by_batch[5] == [3, 30_000, 2_790_000, 60_000]


def test_histogram_buckets_are_cumulative_for_prometheus():
    histogram = Histogram(DURATION_BOUNDS_NS)
    for ns in (50_000, 100_000, 100_001, 10**12):
        histogram.observe(ns)
    cumulative = histogram.cumulative()
    assert cumulative[0] == 2  # <= 100 us, the bound included
    assert cumulative[1] == 3
    assert cumulative[-2] == 3 and cumulative[-1] == 4  # past 30 s: only in +Inf


@pytest.mark.parametrize(
    "snapshot",
    [
        None,
        [],
        "x",
        {"predict": None},
        {"predict": {}},
        {"predict": {"q": [[1], 1], "s": {}, "b": [[0] * 10, 0], "x": 1, "i": 1, "j": 1, "c": [0, 0, 0], "bb": {}}},
        {
            "predict": {
                "q": [[0] * 18, 0],
                "s": {},
                "b": [[0] * 10, 0],
                "x": -1,
                "i": 1,
                "j": 1,
                "c": [0, 0, 0],
                "bb": {},
            }
        },
        {
            "predict": {
                "q": [[0] * 18, 0],
                "s": {"1:model": [["x"] * 18, 0]},
                "b": [[0] * 10, 0],
                "x": 1,
                "i": 1,
                "j": 1,
                "c": [0, 0, 0],
                "bb": {},
            }
        },
        {
            "predict": {
                "q": [[0] * 18, 0],
                "s": {},
                "b": [[0] * 10, 0],
                "x": 1,
                "i": 1,
                "j": 1,
                "c": [0, 0, 0],
                "bb": {"-1": [1, 1, 1, 1]},
            }
        },
        {
            "predict": {
                "q": [[0] * 18, 0],
                "s": {"x" * 1000: [[0] * 18, 0]},
                "b": [[0] * 10, 0],
                "x": True,
                "i": 1,
                "j": 1,
                "c": [0, 0, 0],
                "bb": {},
            }
        },
    ],
)
def test_a_malformed_snapshot_is_dropped(snapshot):
    assert read_snapshot(snapshot, {"predict"}) == {}


def test_methods_the_servable_did_not_report_never_become_labels():
    snapshot = counted().snapshot()
    snapshot["invented"] = snapshot["predict"]
    assert list(read_snapshot(snapshot, {"predict"})) == ["predict"]
