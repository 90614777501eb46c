"""Reading a server's Prometheus metrics in the tests."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from mindserve._metrics.exposition import WORKER_TOTALS_MAX_AGE_S


def scrape(address: str) -> dict:
    """Every sample of http://address/metrics: {(name, sorted labels): value}."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=30).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape_fresh(address: str) -> dict:
    """``scrape``, once the workers' totals of any earlier scrape are too old to be reused: what the workers
    counted up to now is in it."""
    time.sleep(WORKER_TOTALS_MAX_AGE_S)
    return scrape(address)


def value(samples: dict, name: str, **labels) -> float:
    """One sample's value (0 when the series does not exist yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def pending(address: str, servable: str) -> float:
    """The requests handed to the workers of a servable (all its versions) and not yet answered."""
    return sum(
        v
        for (name, labels), v in scrape(address).items()
        if name == "mindserve_pending_requests" and dict(labels)["servable"] == servable
    )
